// VHD files and chains on disk: images made by qemu-img and by vhd_create
// open with the sizes and allocation the oracles report; differencing
// chains resolve through every locator kind and the parent name; hostile
// files and chains are refused with a message naming the file and field.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "blkback/vhd_file.h"
#include "tests/fixtures/vhd_files.h"

namespace xenpath {
namespace {

using test::TempDir;
using vhd::DiskType;

VhdStatus create(const std::string& path, DiskType type, uint64_t size, const std::string& parent = "") {
  VhdCreateOptions o;
  o.type = type;
  o.size = size;
  o.parent = parent;
  return vhd_create(path, o);
}

VhdResult<VhdChain> open_chain(const std::string& path, VhdOpenOptions o = {}) { return vhd_open_chain(path, o); }

// The error of opening `path`, or "" when it opened.
std::string open_error(const std::string& path, VhdOpenOptions o = {}) {
  auto c = vhd_open_chain(path, o);
  return c ? std::string() : c.error().message;
}

uint64_t qemu_virtual_size(const std::string& path) {
  auto r = test::run_command("qemu-img info --output=json -f vpc " + test::shell_quote(path));
  EXPECT_EQ(r.status, 0) << r.out;
  return nlohmann::json::parse(r.out).value("virtual-size", uint64_t{0});
}

TEST(VhdFile, CreatesDynamicAndFixedThatQemuReadsAtTheSameSize) {
  TempDir d;
  const uint64_t size = 100ull << 20;  // not a CHS multiple: QEMU must trust current_size
  ASSERT_TRUE(vhd_ok(create(d / "dyn.vhd", DiskType::kDynamic, size)));
  ASSERT_TRUE(vhd_ok(create(d / "fix.vhd", DiskType::kFixed, size)));
  auto dyn = open_chain(d / "dyn.vhd");
  ASSERT_TRUE(dyn) << dyn.error().message;
  ASSERT_EQ(dyn->levels.size(), 1u);
  const VhdLevel& l = dyn->leaf();
  EXPECT_EQ(l.virtual_size(), size);
  EXPECT_TRUE(l.sparse());
  EXPECT_EQ(l.layout.block_size, 2u << 20);
  EXPECT_EQ(l.layout.bitmap_bytes, 512u);
  EXPECT_EQ(l.bat.size(), 50u);
  EXPECT_EQ(l.allocated_blocks, 0u);
  EXPECT_EQ(l.footer_offset, l.end_of_data);
  EXPECT_TRUE(dyn->warnings.empty()) << dyn->warnings.front();
  auto fix = open_chain(d / "fix.vhd");
  ASSERT_TRUE(fix) << fix.error().message;
  EXPECT_EQ(fix->leaf().virtual_size(), size);
  EXPECT_EQ(fix->leaf().file_size, size + 512);
  // O_EXCL: never clobbers an image.
  EXPECT_EQ(create(d / "dyn.vhd", DiskType::kDynamic, size).code, EEXIST);
  EXPECT_NE(create(d / "odd.vhd", DiskType::kDynamic, 1000).message.find("size 1000"), std::string::npos);

  XP_REQUIRE_TOOL("qemu-img");
  EXPECT_EQ(qemu_virtual_size(d / "dyn.vhd"), size);
  EXPECT_EQ(qemu_virtual_size(d / "fix.vhd"), size);
}

TEST(VhdFile, OpensWhatQemuImgMakesAndQemuIoWrites) {
  XP_REQUIRE_TOOL("qemu-img");
  XP_REQUIRE_TOOL("qemu-io");
  TempDir d;
  for (const char* sub : {"dynamic", "fixed"}) {
    const std::string p = d / (std::string(sub) + ".vhd");
    ASSERT_TRUE(test::qemu_make_vpc(p, sub, "100M", {"write -P 0xab 1M 64k", "write -P 0xcd 9M 4M"}));
    auto c = open_chain(p);
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->virtual_size(), qemu_virtual_size(p)) << sub;
    if (std::string(sub) == "dynamic") {
      // Blocks 0 (1M), 4 and 5 and 6 (9M..13M).
      EXPECT_EQ(c->leaf().allocated_blocks, 4u);
      EXPECT_NE(c->leaf().bat[0], vhd::kBatUnused);
      EXPECT_EQ(c->leaf().bat[1], vhd::kBatUnused);
      EXPECT_NE(c->leaf().bat[6], vhd::kBatUnused);
    }
  }
}

TEST(VhdFile, DifferencingChainResolvesAndLibvhdiAgrees) {
  TempDir d;
  ASSERT_TRUE(vhd_ok(create(d / "base.vhd", DiskType::kDynamic, 64ull << 20)));
  ASSERT_TRUE(vhd_ok(create(d / "mid.vhd", DiskType::kDifferencing, 0, d / "base.vhd")));
  ASSERT_TRUE(vhd_ok(create(d / "leaf.vhd", DiskType::kDifferencing, 0, d / "mid.vhd")));
  auto c = open_chain(d / "leaf.vhd");
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->levels.size(), 3u);
  EXPECT_EQ(c->levels[1].path, std::filesystem::canonical(d / "mid.vhd").string());
  EXPECT_EQ(c->levels[2].path, std::filesystem::canonical(d / "base.vhd").string());
  EXPECT_EQ(c->virtual_size(), 64ull << 20);
  EXPECT_TRUE(c->levels[1].read_only);
  EXPECT_TRUE(c->warnings.empty()) << c->warnings.front();
  // What the child recorded: the parent's UUID, basename, three locators.
  const vhd::DynamicHeader h = c->leaf().header;
  EXPECT_EQ(h.parent_uuid, c->levels[1].footer.uuid);
  EXPECT_EQ(vhd::decode_parent_name(h.parent_name).text, "mid.vhd");
  EXPECT_EQ(h.locators[0].code, vhd::kPlatMacx);
  EXPECT_EQ(h.locators[1].code, vhd::kPlatW2ku);
  EXPECT_EQ(h.locators[2].code, vhd::kPlatW2ru);
  EXPECT_EQ(h.locators[3].code, vhd::kPlatNone);

  // The whole folder moved: relative locators still find the parents.
  const std::string moved = d.path + "/moved";
  std::filesystem::create_directory(moved);
  for (const char* n : {"base.vhd", "mid.vhd", "leaf.vhd"}) std::filesystem::rename(d / n, moved + "/" + n);
  auto m = open_chain(moved + "/leaf.vhd");
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->levels.size(), 3u);

  XP_REQUIRE_TOOL("vhdiinfo");
  auto r = test::run_command("vhdiinfo " + test::shell_quote(moved + "/leaf.vhd"));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("Differential"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(vhd::uuid_string(m->levels[1].footer.uuid)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mid.vhd"), std::string::npos) << r.out;
}

TEST(VhdFile, ParentFoundByEachLocatorKindAndByName) {
  TempDir d;
  const std::string other = d.path + "/other";
  std::filesystem::create_directory(other);
  ASSERT_TRUE(vhd_ok(create(other + "/base.vhd", DiskType::kDynamic, 8ull << 20)));
  ASSERT_TRUE(vhd_ok(create(d / "child.vhd", DiskType::kDifferencing, 0, other + "/base.vhd")));
  ASSERT_TRUE(open_chain(d / "child.vhd"));
  const vhd::DynamicHeader orig = test::read_header(d / "child.vhd");
  // Keep one locator at a time; the name points nowhere (parent is in other/).
  for (size_t keep = 0; keep < 3; ++keep) {
    test::patch_header(d / "child.vhd", [&](vhd::DynamicHeader& h) {
      h = orig;
      for (size_t i = 0; i < vhd::kLocatorCount; ++i)
        if (i != keep) h.locators[i] = {};
    });
    auto c = open_chain(d / "child.vhd");
    ASSERT_TRUE(c) << keep << ": " << c.error().message;
    EXPECT_EQ(c->levels.size(), 2u);
  }
  // An absolute W2ku path (Windows style) works too.
  const std::string abs = std::filesystem::canonical(other + "/base.vhd").string();
  auto payload = vhd::encode_locator(vhd::kPlatW2ku, abs);
  test::write_bytes(d / "child.vhd", orig.locators[1].data_offset, payload->data(), payload->size());
  test::patch_header(d / "child.vhd", [&](vhd::DynamicHeader& h) {
    h = orig;
    h.locators[0] = {};
    h.locators[2] = {};
    h.locators[1].data_length = static_cast<uint32_t>(payload->size());
    h.locators[1].data_space = 4096;
  });
  ASSERT_TRUE(open_chain(d / "child.vhd")) << open_error(d / "child.vhd");
  // No locators at all: only the parent name in the child's folder.
  test::patch_header(d / "child.vhd", [&](vhd::DynamicHeader& h) {
    h = orig;
    h.locators = {};
  });
  EXPECT_NE(open_error(d / "child.vhd").find("parent not found"), std::string::npos);
  std::filesystem::rename(other + "/base.vhd", d / "base.vhd");
  auto c = open_chain(d / "child.vhd");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->levels.size(), 2u);
}

TEST(VhdFile, RefusesCorruptFooterAndHeader) {
  TempDir d;
  const std::string p = d / "a.vhd";
  ASSERT_TRUE(vhd_ok(create(p, DiskType::kDynamic, 16ull << 20)));
  const uint64_t end = test::file_size(p) - 512;
  // Footer at the end corrupt, the copy at 0 intact: refused, repair named.
  uint8_t junk = 0x5A;
  test::write_bytes(p, end + 100, &junk, 1);
  std::string e = open_error(p);
  EXPECT_NE(e.find(p + ": footer checksum"), std::string::npos) << e;
  EXPECT_NE(e.find("--repair"), std::string::npos) << e;
  VhdOpenOptions lenient;
  lenient.accept_footer_copy = true;
  auto c = open_chain(p, lenient);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(c->leaf().footer_from_copy);
  EXPECT_FALSE(c->warnings.empty());
  // Both gone: refused without the hint.
  test::write_bytes(p, 100, &junk, 1);
  e = open_error(p, lenient);
  EXPECT_NE(e.find("footer checksum"), std::string::npos) << e;
  EXPECT_EQ(e.find("--repair"), std::string::npos) << e;

  ASSERT_TRUE(vhd_ok(create(d / "b.vhd", DiskType::kDynamic, 16ull << 20)));
  test::write_bytes(d / "b.vhd", 512 + 200, &junk, 1);
  e = open_error(d / "b.vhd");
  EXPECT_NE(e.find(d / "b.vhd" + ": header checksum"), std::string::npos) << e;
  // Too small to be a VHD at all, and a raw file.
  test::write_bytes(d / "c.vhd", 0, "abc", 3);
  EXPECT_NE(open_error(d / "c.vhd").find("too small"), std::string::npos);
  std::vector<uint8_t> zeros(4096);
  test::write_bytes(d / "raw.img", 0, zeros.data(), zeros.size());
  EXPECT_NE(open_error(d / "raw.img").find("footer cookie"), std::string::npos);
}

TEST(VhdFile, RefusesBatOutOfBoundsOverlappingAndTruncated) {
  XP_REQUIRE_TOOL("qemu-io");
  TempDir d;
  const std::string p = d / "a.vhd";
  ASSERT_TRUE(vhd_ok(create(p, DiskType::kDynamic, 16ull << 20)));
  // Two allocated blocks, written by QEMU.
  auto r = test::run_command("qemu-io -f vpc -c 'write -P 1 0 4k' -c 'write -P 2 2M 4k' " + test::shell_quote(p));
  ASSERT_EQ(r.status, 0) << r.out;
  auto good = open_chain(p);
  ASSERT_TRUE(good) << good.error().message;
  ASSERT_EQ(good->leaf().allocated_blocks, 2u);
  const uint32_t b0 = good->leaf().bat[0], b1 = good->leaf().bat[1];

  test::write_bat_entry(p, 5, 0x00F00000);  // 7.5 GiB: past the end
  std::string e = open_error(p);
  EXPECT_NE(e.find(p + ": BAT entry 5: block at 0x1e0000000"), std::string::npos) << e;
  EXPECT_NE(e.find("runs past the footer"), std::string::npos) << e;
  test::write_bat_entry(p, 5, vhd::kBatUnused);

  test::write_bat_entry(p, 1, b0 + 8);  // overlaps block 0
  e = open_error(p);
  EXPECT_NE(e.find("BAT entry 1"), std::string::npos) << e;
  EXPECT_NE(e.find("overlaps BAT entry 0"), std::string::npos) << e;
  test::write_bat_entry(p, 1, 3);  // on the BAT itself (sector 3)
  e = open_error(p);
  EXPECT_NE(e.find("BAT entry 1 (block at 0x600) overlaps BAT at 0x600"), std::string::npos) << e;
  test::write_bat_entry(p, 1, b1);
  ASSERT_EQ(open_error(p), "");

  // Truncated in the last block (a crash before the footer moved): the end
  // has no footer; with the copy and dangling blocks dropped it opens.
  const uint64_t cut = vhd::BlockLayout::bitmap_offset(std::max(b0, b1)) + 4096;
  ASSERT_EQ(::truncate(p.c_str(), static_cast<off_t>(cut)), 0);
  e = open_error(p);
  EXPECT_NE(e.find("footer"), std::string::npos) << e;
  VhdOpenOptions lenient;
  lenient.accept_footer_copy = true;
  e = open_error(p, lenient);
  EXPECT_NE(e.find("runs past the footer"), std::string::npos) << e;
  lenient.drop_dangling_blocks = true;
  auto c = open_chain(p, lenient);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->leaf().allocated_blocks, 1u);
}

TEST(VhdFile, RefusesLoopsWrongParentsAndDeepChains) {
  TempDir d;
  ASSERT_TRUE(vhd_ok(create(d / "base.vhd", DiskType::kDynamic, 8ull << 20)));
  ASSERT_TRUE(vhd_ok(create(d / "a.vhd", DiskType::kDifferencing, 0, d / "base.vhd")));
  ASSERT_TRUE(vhd_ok(create(d / "b.vhd", DiskType::kDifferencing, 0, d / "a.vhd")));

  // Wrong parent UUID: the base was replaced by another image of that name.
  const vhd::Uuid real = test::read_footer(d / "base.vhd").uuid;
  test::patch_footer(d / "base.vhd", [](vhd::Footer& f) { f.uuid[0] ^= 0xFF; });
  std::string e = open_error(d / "b.vhd");
  EXPECT_NE(e.find("a.vhd: header parent unique id: " + vhd::uuid_string(real)), std::string::npos) << e;
  test::patch_footer(d / "base.vhd", [&](vhd::Footer& f) { f.uuid = real; });
  ASSERT_EQ(open_error(d / "b.vhd"), "");

  // A loop: a's parent becomes b (by name, UUID and locators pointing to b).
  const vhd::Uuid buuid = test::read_footer(d / "b.vhd").uuid;
  test::patch_header(d / "a.vhd", [&](vhd::DynamicHeader& h) {
    h.parent_uuid = buuid;
    h.parent_name = *vhd::encode_parent_name("b.vhd");
    h.locators = {};
  });
  VhdResult<VhdChain> loop = open_chain(d / "b.vhd");
  ASSERT_FALSE(loop);
  EXPECT_EQ(loop.error().code, ELOOP);
  EXPECT_NE(loop.error().message.find("loops"), std::string::npos) << loop.error().message;
  // A child that is its own parent.
  const vhd::Uuid auuid = test::read_footer(d / "a.vhd").uuid;
  test::patch_header(d / "a.vhd", [&](vhd::DynamicHeader& h) {
    h.parent_uuid = auuid;
    h.parent_name = *vhd::encode_parent_name("a.vhd");
  });
  loop = open_chain(d / "a.vhd");
  ASSERT_FALSE(loop);
  EXPECT_EQ(loop.error().code, ELOOP);

  // Depth bound.
  TempDir d2;
  ASSERT_TRUE(vhd_ok(create(d2 / "l0.vhd", DiskType::kDynamic, 8ull << 20)));
  for (int i = 1; i < 5; ++i) {
    ASSERT_TRUE(vhd_ok(create(d2 / ("l" + std::to_string(i) + ".vhd"), DiskType::kDifferencing, 0,
                              d2 / ("l" + std::to_string(i - 1) + ".vhd"))));
  }
  VhdOpenOptions shallow;
  shallow.max_depth = 4;
  auto deep = open_chain(d2 / "l4.vhd", shallow);
  ASSERT_FALSE(deep);
  EXPECT_EQ(deep.error().code, EMLINK);
  shallow.max_depth = 5;
  ASSERT_TRUE(open_chain(d2 / "l4.vhd", shallow));

  // Missing parent.
  std::filesystem::remove(d2 / "l0.vhd");
  auto missing = open_chain(d2 / "l4.vhd");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  EXPECT_NE(missing.error().message.find("l1.vhd: parent not found"), std::string::npos) << missing.error().message;
}

TEST(VhdFile, ParentTimestampMismatchWarnsOrRefuses) {
  TempDir d;
  ASSERT_TRUE(vhd_ok(create(d / "base.vhd", DiskType::kDynamic, 8ull << 20)));
  ASSERT_TRUE(vhd_ok(create(d / "child.vhd", DiskType::kDifferencing, 0, d / "base.vhd")));
  // The parent modified after the snapshot (mtime moves one hour ahead).
  const auto t = std::filesystem::last_write_time(d / "base.vhd");
  std::filesystem::last_write_time(d / "base.vhd", t + std::chrono::hours(1));
  auto c = open_chain(d / "child.vhd");
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->warnings.size(), 1u);
  EXPECT_NE(c->warnings[0].find("header parent timestamp"), std::string::npos);
  VhdOpenOptions strict;
  strict.strict_timestamps = true;
  EXPECT_NE(open_error(d / "child.vhd", strict).find("header parent timestamp"), std::string::npos);
}

}  // namespace
}  // namespace xenpath
