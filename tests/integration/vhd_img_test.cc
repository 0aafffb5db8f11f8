// xenpath-img's operations against oracles nobody here wrote, with the
// quirks docs/vhd.md lists: qemu-img convert for fixed and dynamic images
// (QEMU ignores bitmaps and parents, so it only judges single files whose
// unwritten sectors are zeros), vhdimount/vhdiinfo for chains written in
// 4 KiB-aligned pieces, and a raw shadow of every write for the rest.
// check --repair after simulated crashes; coalesce interrupted and killed
// (SIGKILL) at several points, then resumed.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <random>

#include "blkback/vhd_tool.h"
#include "tests/fixtures/vhd_files.h"

namespace xenpath {
namespace {

using test::TempDir;
using vhd::DiskType;

constexpr uint64_t kDisk = 64ull << 20;

void make(const std::string& path, DiskType type, uint64_t size = kDisk) {
  img::CreateOptions o;
  o.type = type;
  o.size = size;
  const VhdStatus s = img::create(path, o);
  ASSERT_TRUE(vhd_ok(s)) << s.message;
}

std::vector<uint8_t> to_raw(const std::string& vhd, const std::string& raw) {
  auto st = img::convert(vhd, raw, "raw", {});
  EXPECT_TRUE(st) << st.error().message;
  return test::slurp(raw);
}

std::vector<uint8_t> qemu_to_raw(const std::string& vhd, const std::string& raw) {
  auto r = test::run_command("qemu-img convert -f vpc -O raw " + test::shell_quote(vhd) + " " + test::shell_quote(raw));
  EXPECT_EQ(r.status, 0) << r.out;
  return test::slurp(raw);
}

void random_writes(const std::string& path, std::vector<uint8_t>& shadow, uint32_t seed, int count);

// A dynamic base at `path` with `count` random writes; returns its shadow.
std::vector<uint8_t> written_base(const std::string& path, uint32_t seed, int count) {
  make(path, DiskType::kDynamic);
  std::vector<uint8_t> shadow(kDisk);
  random_writes(path, shadow, seed, count);
  return shadow;
}

// Random 4 KiB-aligned writes into `path`, mirrored into `shadow`.
void random_writes(const std::string& path, std::vector<uint8_t>& shadow, uint32_t seed, int count) {
  std::mt19937 rng(seed);
  for (int i = 0; i < count; ++i) {
    const uint64_t len = 4096ull * (1 + rng() % 64);
    const uint64_t off = 4096ull * (rng() % ((shadow.size() - len) / 4096));
    std::vector<uint8_t> data(len);
    for (auto& b : data) b = static_cast<uint8_t>(rng() | 1);
    test::vhd_test_write(path, off, data.data(), data.size());
    std::copy(data.begin(), data.end(), shadow.begin() + static_cast<ptrdiff_t>(off));
  }
}

// What vhdimount (libvhdi, FUSE) reads for the chain ending at `leaf`;
// nullopt when FUSE does not work here. vhdimount exposes every level of
// the chain, base first: vhdi1 is the base alone, vhdiN (N = depth) the
// leaf with its parents under it.
std::optional<std::vector<uint8_t>> vhdimount_read(const std::string& leaf, const std::string& mnt, int depth) {
  std::filesystem::create_directories(mnt);
  auto r = test::run_command("vhdimount " + test::shell_quote(leaf) + " " + test::shell_quote(mnt));
  const std::string top = mnt + "/vhdi" + std::to_string(depth);
  std::optional<std::vector<uint8_t>> data;
  if (r.status == 0 && std::filesystem::exists(top)) data = test::slurp(top);
  test::run_command("umount " + test::shell_quote(mnt) + " || fusermount -u " + test::shell_quote(mnt));
  return data;
}

TEST(VhdImg, ParsesSizes) {
  EXPECT_EQ(img::parse_size("4096"), 4096u);
  EXPECT_EQ(img::parse_size("64K"), 65536u);
  EXPECT_EQ(img::parse_size("10G"), 10ull << 30);
  EXPECT_EQ(img::parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(img::parse_size("2T"), 2ull << 40);
  EXPECT_FALSE(img::parse_size("").has_value());
  EXPECT_FALSE(img::parse_size("G").has_value());
  EXPECT_FALSE(img::parse_size("10X").has_value());
  EXPECT_FALSE(img::parse_size("99999999999999999999").has_value());
  EXPECT_FALSE(img::parse_size("20000000T").has_value());
}

TEST(VhdImg, OurImagesConvertLikeQemuImgConvertsThem) {
  XP_REQUIRE_TOOL("qemu-img");
  XP_REQUIRE_TOOL("qemu-io");
  TempDir d;
  const uint64_t size = 100ull << 20;  // not a CHS multiple
  make(d / "dyn.vhd", DiskType::kDynamic, size);
  make(d / "fix.vhd", DiskType::kFixed, size);
  std::vector<uint8_t> shadow(size);
  random_writes(d / "dyn.vhd", shadow, 1, 40);  // partial bitmaps, zeros elsewhere
  auto r = test::run_command("qemu-io -f vpc -c 'write -P 0x5a 3M 1M' -c 'write -P 0xa5 99M 512' " +
                             test::shell_quote(d / "fix.vhd"));
  ASSERT_EQ(r.status, 0) << r.out;
  const auto ours = to_raw(d / "dyn.vhd", d / "dyn.ours.raw");
  EXPECT_EQ(ours, shadow);
  EXPECT_EQ(qemu_to_raw(d / "dyn.vhd", d / "dyn.qemu.raw"), ours);
  EXPECT_EQ(qemu_to_raw(d / "fix.vhd", d / "fix.qemu.raw"), to_raw(d / "fix.vhd", d / "fix.ours.raw"));
}

TEST(VhdImg, QemuImagesConvertLikeQemuImgConvertsThem) {
  XP_REQUIRE_TOOL("qemu-img");
  XP_REQUIRE_TOOL("qemu-io");
  TempDir d;
  for (const char* sub : {"dynamic", "fixed"}) {
    const std::string p = d / (std::string(sub) + ".vhd");
    ASSERT_TRUE(
        test::qemu_make_vpc(p, sub, "50M", {"write -P 0x11 0 3M", "write -P 0x22 7M 4k", "write -P 0x33 20M 1536"}));
    const auto q = qemu_to_raw(p, p + ".qemu.raw");
    EXPECT_EQ(to_raw(p, p + ".ours.raw"), q) << sub;
    EXPECT_EQ(q[7u << 20], 0x22);
  }
}

TEST(VhdImg, RawToVhdAndBack) {
  TempDir d;
  std::vector<uint8_t> raw(kDisk + 1000, 0);  // not a sector multiple: padded
  std::mt19937 rng(7);
  for (uint64_t off : {uint64_t{0}, uint64_t{5} << 20, uint64_t{33} << 20, kDisk - 3000}) {
    for (uint64_t i = 0; i < 3000; ++i) raw[off + i] = static_cast<uint8_t>(rng() | 1);
  }
  test::write_bytes(d / "in.raw", 0, raw.data(), raw.size());
  auto st = img::convert(d / "in.raw", d / "out.vhd", "vhd", {});
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_EQ(st->blocks, 4u);  // zero blocks stay unallocated
  auto chain = vhd_open_chain(d / "out.vhd", {});
  ASSERT_TRUE(chain) << chain.error().message;
  EXPECT_EQ(chain->virtual_size(), kDisk + 1024);
  EXPECT_EQ(chain->leaf().allocated_blocks, 4u);
  EXPECT_EQ(chain->leaf().footer_offset, chain->leaf().end_of_data);  // the file was cut after its data
  raw.resize(kDisk + 1024, 0);
  EXPECT_EQ(to_raw(d / "out.vhd", d / "back.raw"), raw);
  EXPECT_EQ(img::check(d / "out.vhd", false).status, 0);
  // Refusals: vhd to vhd, an existing destination.
  EXPECT_FALSE(img::convert(d / "out.vhd", d / "x.vhd", "vhd", {}));
  EXPECT_FALSE(img::convert(d / "out.vhd", d / "back.raw", "raw", {}));
  XP_REQUIRE_TOOL("qemu-img");
  EXPECT_EQ(qemu_to_raw(d / "out.vhd", d / "qemu.raw"), raw);
}

TEST(VhdImg, ChainsReadLikeTheShadowAndLikeLibvhdi) {
  TempDir d;
  std::vector<uint8_t> shadow = written_base(d / "base.vhd", 11, 30);
  std::string parent = d / "base.vhd";
  for (int level = 1; level <= 3; ++level) {
    const std::string child = d / ("c" + std::to_string(level) + ".vhd");
    ASSERT_TRUE(vhd_ok(img::snapshot(parent, child)));
    random_writes(child, shadow, 100 + level, 25);
    parent = child;
  }
  const std::string leaf = d / "c3.vhd";
  EXPECT_EQ(to_raw(leaf, d / "leaf.raw"), shadow);
  auto info = img::info(leaf);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ((*info)["depth"], 4);
  EXPECT_EQ((*info)["virtual_size"], kDisk);
  // map: the leaf's ranges are exactly what was written into it.
  auto m = img::map(leaf);
  ASSERT_TRUE(m);
  ASSERT_EQ(m->size(), 4u);
  EXPECT_FALSE((*m)[0].ranges.empty());
  for (const auto& [off, len] : (*m)[0].ranges) {
    EXPECT_EQ(off % 4096, 0u);
    EXPECT_EQ(len % 4096, 0u);
  }
  EXPECT_EQ(img::check(leaf, false).status, 0);

  if (test::have_tool("vhdiinfo")) {
    auto r = test::run_command("vhdiinfo " + test::shell_quote(leaf));
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("c2.vhd"), std::string::npos) << r.out;
  }
  if (!test::have_tool("vhdimount")) GTEST_SKIP() << "vhdimount not installed: checked against the shadow only";
  auto mounted = vhdimount_read(leaf, d / "mnt", 4);
  if (!mounted) GTEST_SKIP() << "vhdimount could not mount (no FUSE here): checked with vhdiinfo and the shadow only";
  // Written in 4 KiB-aligned pieces, so libvhdi's sub-4 KiB bitmap quirk
  // does not apply: it must read the whole chain as the shadow.
  ASSERT_EQ(mounted->size(), shadow.size());
  size_t diffs = 0;
  for (size_t i = 0; i < shadow.size(); ++i) diffs += (*mounted)[i] != shadow[i];
  EXPECT_EQ(diffs, 0u) << "libvhdi reads the chain differently from the raw shadow";
}

TEST(VhdImg, CoalesceMergesAndTheChainReadsTheSame) {
  TempDir d;
  std::vector<uint8_t> shadow = written_base(d / "base.vhd", 21, 20);
  ASSERT_TRUE(vhd_ok(img::snapshot(d / "base.vhd", d / "mid.vhd")));
  random_writes(d / "mid.vhd", shadow, 22, 20);
  ASSERT_TRUE(vhd_ok(img::snapshot(d / "mid.vhd", d / "leaf.vhd")));
  random_writes(d / "leaf.vhd", shadow, 23, 30);
  // A second child of mid blocks the merge (it would see leaf's data).
  ASSERT_TRUE(vhd_ok(img::snapshot(d / "mid.vhd", d / "sibling.vhd")));
  auto st = img::coalesce(d / "leaf.vhd", {});
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, EBUSY);
  std::filesystem::remove(d / "sibling.vhd");

  st = img::coalesce(d / "leaf.vhd", {});
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_GT(st->blocks, 0u);
  EXPECT_EQ(to_raw(d / "mid.vhd", d / "mid.raw"), shadow);  // mid alone now holds the leaf's view
  EXPECT_EQ(to_raw(d / "leaf.vhd", d / "leaf.raw"), shadow);
  auto chain = vhd_open_chain(d / "leaf.vhd", {});
  ASSERT_TRUE(chain);
  EXPECT_TRUE(chain->warnings.empty()) << chain->warnings.front();  // parent timestamp updated
  EXPECT_EQ(img::check(d / "mid.vhd", false).status, 0);
  // Idempotent: again changes nothing.
  ASSERT_TRUE(img::coalesce(d / "leaf.vhd", {}));
  std::filesystem::remove(d / "mid.raw");
  EXPECT_EQ(to_raw(d / "mid.vhd", d / "mid.raw"), shadow);
  // Into the base, then into a fixed parent.
  ASSERT_TRUE(img::coalesce(d / "mid.vhd", {}));
  std::filesystem::remove(d / "mid.raw");
  EXPECT_EQ(to_raw(d / "base.vhd", d / "base.raw"), shadow);

  make(d / "fixed.vhd", DiskType::kFixed);
  ASSERT_TRUE(vhd_ok(img::snapshot(d / "fixed.vhd", d / "onfixed.vhd")));
  std::vector<uint8_t> fshadow(kDisk);
  random_writes(d / "onfixed.vhd", fshadow, 31, 20);
  ASSERT_TRUE(img::coalesce(d / "onfixed.vhd", {}));
  EXPECT_EQ(to_raw(d / "fixed.vhd", d / "fixed.raw"), fshadow);
}

TEST(VhdImg, CoalesceInterruptedOrKilledResumes) {
  TempDir d;
  std::vector<uint8_t> shadow = written_base(d / "base.vhd", 41, 10);
  ASSERT_TRUE(vhd_ok(img::snapshot(d / "base.vhd", d / "leaf.vhd")));
  random_writes(d / "leaf.vhd", shadow, 42, 80);  // touches most of the 32 blocks

  // Interrupted (SIGINT's flag) after 5 blocks: consistent, view unchanged.
  std::atomic<bool> stop{false};
  img::CopyOptions o;
  uint64_t calls = 0;
  o.interrupt = &stop;
  o.batch_bytes = 8u << 20;  // several batches in this small disk
  o.progress = [&](uint64_t, uint64_t) {
    if (++calls == 5) stop = true;
  };
  auto st = img::coalesce(d / "leaf.vhd", o);
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_TRUE(st->interrupted);
  EXPECT_LT(st->blocks, st->total_blocks);
  EXPECT_EQ(img::check(d / "base.vhd", false).status, 0);
  EXPECT_EQ(to_raw(d / "leaf.vhd", d / "i.raw"), shadow);

  // Killed (SIGKILL) at several points of the copy, each time resumed.
  for (uint64_t kill_at : {1u, 3u, 9u, 17u}) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      img::CopyOptions k;
      k.batch_bytes = 8u << 20;  // killed in the 1st, 2nd and later batches
      uint64_t n = 0;
      k.progress = [&](uint64_t, uint64_t) {
        if (++n == kill_at) ::raise(SIGKILL);
      };
      (void)img::coalesce(d / "leaf.vhd", k);
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << kill_at;
    const img::CheckReport base_check = img::check(d / "base.vhd", false);
    EXPECT_EQ(base_check.status, 0) << kill_at << ": " << (base_check.errors.empty() ? "" : base_check.errors[0]);
    const std::string raw = d / ("k" + std::to_string(kill_at) + ".raw");
    EXPECT_EQ(to_raw(d / "leaf.vhd", raw), shadow) << kill_at;
  }
  st = img::coalesce(d / "leaf.vhd", {});
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_FALSE(st->interrupted);
  EXPECT_EQ(to_raw(d / "base.vhd", d / "final.raw"), shadow);
  // The orphans of the killed runs were reused, not leaked without bound.
  EXPECT_LT(test::file_size(d / "base.vhd"), 2 * (kDisk + (1u << 20)));
}

// copy_file_range's fallback: pread/pwrite where the kernel refuses (EXDEV
// from another file system) or when told to, giving the same bytes.
TEST(VhdImg, CopiesInTheKernelOrThroughABufferAlike) {
  TempDir d;
  // A chain with partly written blocks (bitmap runs) at every level, and
  // blocks the leaf holds that its parent lacks or has.
  std::vector<uint8_t> shadow = written_base(d / "base.vhd", 61, 20);
  ASSERT_TRUE(vhd_ok(img::snapshot(d / "base.vhd", d / "leaf.vhd")));
  random_writes(d / "leaf.vhd", shadow, 62, 30);

  auto in_kernel = img::convert(d / "leaf.vhd", d / "k.raw", "raw", {});
  ASSERT_TRUE(in_kernel) << in_kernel.error().message;
  EXPECT_EQ(test::slurp(d / "k.raw"), shadow);
  struct statfs sf {};
  ASSERT_EQ(::statfs(d.path.c_str(), &sf), 0);
  // Where copy_file_range works within one file system (ext4, XFS, Btrfs:
  // in-kernel splice or reflink; tmpfs: splice), it is what copied.
  if (sf.f_type == 0xEF53 || sf.f_type == 0x58465342 || sf.f_type == 0x9123683E || sf.f_type == 0x01021994) {
    EXPECT_EQ(in_kernel->bytes_in_kernel, in_kernel->bytes_written);
    EXPECT_GT(in_kernel->bytes_in_kernel, 0u);
  }
  img::CopyOptions buffered;
  buffered.in_kernel_copy = false;
  auto forced = img::convert(d / "leaf.vhd", d / "b.raw", "raw", buffered);
  ASSERT_TRUE(forced) << forced.error().message;
  EXPECT_EQ(forced->bytes_in_kernel, 0u);
  EXPECT_EQ(forced->bytes_written, in_kernel->bytes_written);
  EXPECT_EQ(test::slurp(d / "b.raw"), shadow);

  // coalesce through the buffer, in small batches: the parent alone now
  // reads as the leaf did, and checks clean.
  buffered.batch_bytes = 4u << 20;
  auto merged = img::coalesce(d / "leaf.vhd", buffered);
  ASSERT_TRUE(merged) << merged.error().message;
  EXPECT_EQ(merged->bytes_in_kernel, 0u);
  EXPECT_GT(merged->bytes_written, 0u);
  EXPECT_EQ(to_raw(d / "base.vhd", d / "base.raw"), shadow);
  EXPECT_EQ(img::check(d / "base.vhd", false).status, 0);

  // Across file systems the kernel answers EXDEV: the copy falls back.
  struct stat shm {};
  struct stat tmp {};
  if (::stat("/dev/shm", &shm) == 0 && ::stat(d.path.c_str(), &tmp) == 0 && shm.st_dev != tmp.st_dev) {
    TempDir other("/dev/shm");
    auto cross = img::convert(d / "leaf.vhd", other / "x.raw", "raw", {});
    ASSERT_TRUE(cross) << cross.error().message;
    EXPECT_EQ(cross->bytes_in_kernel, 0u);
    EXPECT_EQ(test::slurp(other / "x.raw"), shadow);
  } else {
    GTEST_SKIP() << "/dev/shm is missing or on the temp dir's file system: EXDEV fallback not exercised";
  }
}

TEST(VhdImg, CheckRepairsAFooterLostInACrashAndDanglingBlocks) {
  TempDir d;
  const std::string p = d / "a.vhd";
  std::vector<uint8_t> shadow = written_base(p, 51, 10);
  EXPECT_EQ(img::check(p, false).status, 0);

  // A block allocation that wrote data over the footer's place and died
  // before the moved footer: the end of the file is data.
  const uint64_t end = test::file_size(p);
  std::vector<uint8_t> junk(1u << 20, 0x77);
  test::write_bytes(p, end - 512, junk.data(), junk.size());
  img::CheckReport r = img::check(p, false);
  EXPECT_EQ(r.status, 1);
  ASSERT_FALSE(r.errors.empty());
  EXPECT_NE(r.errors[0].find("repairable"), std::string::npos) << r.errors[0];
  r = img::check(p, true);
  EXPECT_EQ(r.status, 0) << (r.errors.empty() ? "" : r.errors[0]);
  EXPECT_FALSE(r.repaired.empty());
  EXPECT_EQ(test::file_size(p), end);  // cut after the last whole block
  EXPECT_EQ(to_raw(p, d / "1.raw"), shadow);

  // A BAT entry naming a block past the end of the file.
  test::write_bat_entry(p, 31, 0x00F00000);
  EXPECT_EQ(img::check(p, false).status, 1);
  r = img::check(p, true);
  EXPECT_EQ(r.status, 0) << (r.errors.empty() ? "" : r.errors[0]);
  ASSERT_EQ(r.repaired.size(), 1u);
  EXPECT_NE(r.repaired[0].find("BAT entry 31"), std::string::npos);
  EXPECT_EQ(to_raw(p, d / "2.raw"), shadow);

  // A stale footer copy: a warning; --repair rewrites it.
  test::patch_footer(
      p, [](vhd::Footer& f) { f.timestamp += 1; }, false);
  r = img::check(p, false);
  EXPECT_EQ(r.status, 0);
  EXPECT_FALSE(r.warnings.empty());
  r = img::check(p, true);
  EXPECT_EQ(r.repaired.size(), 1u);
  EXPECT_EQ(test::read_bytes(p, 0, 512), test::read_bytes(p, test::file_size(p) - 512, 512));

  // Beyond repair: both footers gone; not a file at all.
  std::vector<uint8_t> zero(512);
  test::write_bytes(p, 0, zero.data(), zero.size());
  test::write_bytes(p, test::file_size(p) - 512, zero.data(), zero.size());
  EXPECT_EQ(img::check(p, true).status, 0);  // no footer anywhere: a raw file, nothing to check
  EXPECT_EQ(img::check(d / "missing.vhd", false).status, 2);
  // A header checksum broken: not repairable, reported.
  make(d / "b.vhd", DiskType::kDynamic);
  uint8_t x = 0x42;
  test::write_bytes(d / "b.vhd", 512 + 300, &x, 1);
  r = img::check(d / "b.vhd", true);
  EXPECT_EQ(r.status, 1);
  ASSERT_FALSE(r.errors.empty());
  EXPECT_NE(r.errors[0].find("header checksum"), std::string::npos);
}

}  // namespace
}  // namespace xenpath
