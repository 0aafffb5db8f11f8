// VhdImage's datapath on real files: random reads and writes over chains of
// depth 1 to 4 checked against a raw shadow kept in memory (every level
// written through the datapath before the next snapshot), requests spanning
// blocks and levels and more iovecs than one readv takes, first-touch
// allocation (many blocks per round, writers waiting for a block being
// allocated), flush, discard, read-only chains on several channels,
// images that qemu-img made and qemu-io wrote served byte for byte, the
// parents never written, and hostile images refused with a message naming
// the file and the field.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "blkback/image_open.h"
#include "blkback/image_vhd.h"
#include "blkback/vhd_tool.h"
#include "tests/fixtures/image_rig.h"
#include "tests/fixtures/vhd_files.h"

namespace xenpath {
namespace {

using test::AlignedBuffer;
using test::ImageRig;
using test::TempDir;
using test::WaitOp;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kDisk = 24 * kMiB;  // 12 blocks of 2 MiB

std::unique_ptr<VhdImage> open_vhd(const std::string& path, bool read_only = false) {
  VhdImage::Options o;
  o.read_only = read_only;
  std::string why;
  auto img = VhdImage::open(path, o, &why);
  EXPECT_TRUE(img.has_value()) << path << ": " << why;
  return img ? std::move(*img) : nullptr;
}

void create(const std::string& path, vhd::DiskType type, uint64_t size, const std::string& parent = {}) {
  VhdCreateOptions c;
  c.type = type;
  c.size = size;
  c.parent = parent;
  const VhdStatus st = vhd_create(path, c);
  ASSERT_TRUE(vhd_ok(st)) << st.message;
}

// One I/O of a batch: its buffer cut into iovecs of random sizes.
struct Io {
  bool write = false;
  uint64_t offset = 0;
  size_t len = 0;
  std::unique_ptr<AlignedBuffer> buf;
  std::vector<iovec> iov;
  WaitOp op;
};

void cut(Io& io, std::mt19937_64& rng, bool many) {
  io.iov.clear();
  size_t at = 0;
  while (at < io.len) {
    size_t piece = many ? 512 : 512 * (1 + rng() % 16);
    piece = std::min(piece, io.len - at);
    io.iov.push_back(iovec{io.buf->p + at, piece});
    at += piece;
  }
}

// The disk as it must read, and the I/O that keeps it so.
struct Shadow {
  explicit Shadow(uint64_t size) : bytes(size, 0) {}
  std::vector<char> bytes;

  // Runs `ios` concurrently on the rig (disjoint ranges), applies the
  // writes, checks the reads. Ranges of one batch never overlap.
  void batch(ImageRig& rig, std::vector<std::unique_ptr<Io>>& ios) {
    rig.reactor->call([&] {
      for (auto& io : ios) {
        if (io->write) {
          io->op.prep_write(io->iov.data(), static_cast<unsigned>(io->iov.size()), io->offset);
        } else {
          io->op.prep_read(io->iov.data(), static_cast<unsigned>(io->iov.size()), io->offset);
        }
        rig.channel->submit(io->op);
      }
    });
    for (auto& io : ios) {
      ASSERT_EQ(io->op.wait(), 0) << (io->write ? "write " : "read ") << io->offset << "+" << io->len;
      if (io->write) {
        std::memcpy(bytes.data() + io->offset, io->buf->p, io->len);
      } else {
        const int cmp = std::memcmp(bytes.data() + io->offset, io->buf->p, io->len);
        if (cmp != 0) {
          size_t k = 0;
          while (bytes[io->offset + k] == io->buf->p[k]) ++k;
          FAIL() << "read " << io->offset << "+" << io->len << " differs at disk byte " << io->offset + k;
        }
      }
    }
  }

  // `rounds` batches of `qd` random disjoint I/Os, `write_pct` of them writes.
  void random(ImageRig& rig, std::mt19937_64& rng, unsigned rounds, unsigned qd, unsigned write_pct) {
    for (unsigned round = 0; round < rounds; ++round) {
      std::vector<std::unique_ptr<Io>> ios;
      std::vector<std::pair<uint64_t, uint64_t>> taken;
      for (unsigned k = 0; k < qd; ++k) {
        auto io = std::make_unique<Io>();
        io->write = rng() % 100 < write_pct;
        // Mostly small, some spanning a block boundary, a few large.
        const unsigned shape = static_cast<unsigned>(rng() % 10);
        const uint64_t sectors = shape < 6 ? 1 + rng() % 16 : shape < 9 ? 1 + rng() % 600 : 2048 + rng() % 2048;
        io->len = sectors * 512;
        uint64_t off = 0;
        if (shape == 7) {
          // Straddle a block boundary.
          const uint64_t b = 1 + rng() % (bytes.size() / (2 * kMiB) - 1);
          off = b * 2 * kMiB - std::min<uint64_t>(io->len / 2, b * 2 * kMiB) / 512 * 512;
        } else {
          off = rng() % ((bytes.size() - io->len) / 512 + 1) * 512;
        }
        off = std::min<uint64_t>(off, bytes.size() - io->len);
        bool clash = false;
        for (auto& [a, e] : taken) clash = clash || (off < e && a < off + io->len);
        if (clash) continue;
        taken.emplace_back(off, off + io->len);
        io->offset = off;
        io->buf = std::make_unique<AlignedBuffer>(io->len);
        if (io->write) {
          for (size_t i = 0; i < io->len; ++i) io->buf->p[i] = static_cast<char>(rng());
        } else {
          std::memset(io->buf->p, 0x5a, io->len);  // zero fills must overwrite this
        }
        cut(*io, rng, rng() % 8 == 0);
        ios.push_back(std::move(io));
      }
      ASSERT_NO_FATAL_FAILURE(batch(rig, ios));
    }
  }

  // Reads the whole disk back in 1 MiB pieces.
  void check_all(ImageRig& rig) {
    std::mt19937_64 rng(7);
    for (uint64_t off = 0; off < bytes.size(); off += kMiB) {
      std::vector<std::unique_ptr<Io>> ios;
      auto io = std::make_unique<Io>();
      io->offset = off;
      io->len = static_cast<size_t>(std::min<uint64_t>(kMiB, bytes.size() - off));
      io->buf = std::make_unique<AlignedBuffer>(io->len);
      std::memset(io->buf->p, 0x5a, io->len);
      cut(*io, rng, false);
      ios.push_back(std::move(io));
      ASSERT_NO_FATAL_FAILURE(batch(rig, ios));
    }
  }
};

std::vector<uint8_t> file_bytes(const std::string& path) { return test::read_bytes(path, 0, test::file_size(path)); }

// Depth 1..4: each level gets its own random writes through the datapath,
// then becomes the parent of the next; the leaf is exercised last, and the
// chain read back whole, by a fresh writable and a read-only open.
class BlkVhdChain : public ::testing::TestWithParam<int> {};

TEST_P(BlkVhdChain, RandomReadWriteMatchesARawShadow) {
  const int depth = GetParam();
  TempDir dir;
  Shadow shadow(kDisk);
  std::mt19937_64 rng(1000 + depth);
  std::string leaf;
  std::vector<std::vector<uint8_t>> parents;  // each parent's bytes when its child was made
  for (int lvl = 0; lvl < depth; ++lvl) {
    const std::string path = dir / ("level" + std::to_string(lvl) + ".vhd");
    if (lvl == 0) {
      ASSERT_NO_FATAL_FAILURE(create(path, vhd::DiskType::kDynamic, kDisk));
    } else {
      parents.push_back(file_bytes(leaf));
      ASSERT_NO_FATAL_FAILURE(create(path, vhd::DiskType::kDifferencing, 0, leaf));
    }
    leaf = path;
    auto img = open_vhd(path);
    ASSERT_TRUE(img);
    EXPECT_EQ(img->depth(), static_cast<size_t>(lvl + 1));
    EXPECT_EQ(img->info().size_bytes, kDisk);
    EXPECT_EQ(img->info().max_queues, 1u);
    for (int i = 0; i <= lvl; ++i) EXPECT_EQ(img->level_immutable(static_cast<size_t>(i)), i != 0);
    ImageRig rig(*img);
    ASSERT_NO_FATAL_FAILURE(shadow.random(rig, rng, 12, 16, 70));
    WaitOp flush;
    flush.prep_flush();
    EXPECT_EQ(rig.run(flush), 0);
    const VhdChannelStats st = VhdImage::channel_stats(*rig.channel);
    EXPECT_GT(st.allocations, 0u);
    EXPECT_GT(st.data_ops, 0u);
    if (lvl > 0) {
      EXPECT_GT(st.bitmap_loads + st.full_hits, 0u);
    }
  }
  {
    auto img = open_vhd(leaf);
    ASSERT_TRUE(img);
    ImageRig rig(*img);
    ASSERT_NO_FATAL_FAILURE(shadow.random(rig, rng, 8, 24, 30));
    ASSERT_NO_FATAL_FAILURE(shadow.check_all(rig));
  }
  // The parents were never written.
  for (int lvl = depth - 2; lvl >= 0; --lvl) {
    const std::string path = dir / ("level" + std::to_string(lvl) + ".vhd");
    EXPECT_EQ(file_bytes(path), parents[static_cast<size_t>(lvl)]) << path << " changed";
  }
  // Read-only, two channels on two reactors.
  auto ro = open_vhd(leaf, /*read_only=*/true);
  ASSERT_TRUE(ro);
  EXPECT_EQ(ro->info().max_queues, 0u);
  EXPECT_TRUE(ro->level_immutable(0));
  ImageRig a(*ro), b(*ro);
  ASSERT_NO_FATAL_FAILURE(shadow.check_all(a));
  ASSERT_NO_FATAL_FAILURE(shadow.check_all(b));
  AlignedBuffer buf(4096);
  iovec v{buf.p, buf.size};
  WaitOp w;
  w.prep_write(&v, 1, 0);
  EXPECT_EQ(a.run(w), -EROFS);
}

INSTANTIATE_TEST_SUITE_P(Depth, BlkVhdChain, ::testing::Values(1, 2, 3, 4));

TEST(BlkVhd, WritableImageHasOneChannel) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(create(dir / "a.vhd", vhd::DiskType::kDynamic, kDisk));
  auto img = open_vhd(dir / "a.vhd");
  ASSERT_TRUE(img);
  auto r = Reactor::create({});
  ASSERT_TRUE(r);
  auto c1 = img->open_channel(**r);
  ASSERT_TRUE(c1);
  EXPECT_EQ(img->open_channel(**r).error(), EBUSY);
  c1->reset();
  auto c2 = img->open_channel(**r);
  EXPECT_TRUE(c2);
}

// Many writers into the same fresh blocks at once: the first allocates,
// the others wait for its round and then write into the block; one round
// carries many blocks; the bitmaps end up exactly as written.
TEST(BlkVhd, FirstTouchAllocationsBatchAndWait) {
  TempDir dir;
  const std::string path = dir / "a.vhd";
  ASSERT_NO_FATAL_FAILURE(create(path, vhd::DiskType::kDynamic, kDisk));
  Shadow shadow(kDisk);
  {
    auto img = open_vhd(path);
    ASSERT_TRUE(img);
    ImageRig rig(*img);
    std::vector<std::unique_ptr<Io>> ios;
    std::mt19937_64 rng(5);
    for (uint64_t blk = 0; blk < kDisk / (2 * kMiB); ++blk) {
      for (uint64_t k = 0; k < 4; ++k) {  // 4 KiB at four places of each block
        auto io = std::make_unique<Io>();
        io->write = true;
        io->offset = blk * 2 * kMiB + k * 512 * kMiB / 1024 + 4096 * blk;
        io->len = 4096;
        io->buf = std::make_unique<AlignedBuffer>(io->len);
        io->buf->pattern(static_cast<uint32_t>(blk * 4 + k));
        cut(*io, rng, false);
        ios.push_back(std::move(io));
      }
    }
    ASSERT_NO_FATAL_FAILURE(shadow.batch(rig, ios));
    const VhdChannelStats st = VhdImage::channel_stats(*rig.channel);
    EXPECT_EQ(st.allocations, kDisk / (2 * kMiB));
    EXPECT_LT(st.alloc_rounds, st.allocations);  // batched
    EXPECT_GT(st.waits, 0u);                     // later writers waited for their block
    ASSERT_NO_FATAL_FAILURE(shadow.check_all(rig));
  }
  // On the file: every block allocated, 8 sectors set per written piece.
  std::vector<std::string> warnings;
  auto f = vhd_open_file(path, {}, &warnings);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f->allocated_blocks, kDisk / (2 * kMiB));
  for (uint32_t b = 0; b < f->bat.size(); ++b) {
    auto bm = test::read_bytes(path, vhd::BlockLayout::bitmap_offset(f->bat[b]), f->layout.bitmap_bytes);
    EXPECT_EQ(vhd::bitmap_count(bm, f->layout.sectors_per_block), 32u) << "block " << b;
    EXPECT_EQ(f->layout.data_offset(f->bat[b]) % 4096, 0u) << "data of new blocks is page aligned";
  }
  // The end of the file is the footer, right after the data again (the
  // reserve the footer kept while serving was given back at close).
  const vhd::Footer end = test::read_footer(path);
  EXPECT_EQ(std::string(end.cookie.data(), 8), "conectix");
  EXPECT_EQ(f->footer_offset, (f->end_of_data + 511) / 512 * 512);
}

// One allocation round over a 64 GiB disk (a BAT of 32 pieces of 4 KiB):
// new entries in the table's first and last sectors (written as sectors),
// in three adjacent pieces (one write) and in a piece of their own; the
// file then holds exactly those entries, check passes, and the data reads
// back after a reopen.
TEST(BlkVhd, AllocationRoundWritesTheBatPiecesItTouches) {
  TempDir dir;
  const std::string path = dir / "big.vhd";
  constexpr uint64_t kBig = 64ull << 30;
  ASSERT_NO_FATAL_FAILURE(create(path, vhd::DiskType::kDynamic, kBig));
  const std::vector<uint32_t> blocks = {0, 5, 700, 701, 1724, 2748, 5000, 32767};
  std::vector<std::vector<char>> data;
  {
    auto img = open_vhd(path);
    ASSERT_TRUE(img);
    EXPECT_EQ(img->chain().leaf().bat.size(), kBig / (2 * kMiB));
    ImageRig rig(*img);
    std::vector<std::unique_ptr<Io>> ios;
    std::mt19937_64 rng(11);
    for (uint32_t b : blocks) {
      auto io = std::make_unique<Io>();
      io->write = true;
      io->offset = uint64_t{b} * 2 * kMiB + 8192;
      io->len = 4096;
      io->buf = std::make_unique<AlignedBuffer>(io->len);
      io->buf->pattern(b);
      data.emplace_back(io->buf->p, io->buf->p + io->len);
      cut(*io, rng, false);
      ios.push_back(std::move(io));
    }
    rig.reactor->call([&] {
      for (auto& io : ios) {
        io->op.prep_write(io->iov.data(), static_cast<unsigned>(io->iov.size()), io->offset);
        rig.channel->submit(io->op);
      }
    });
    for (auto& io : ios) ASSERT_EQ(io->op.wait(), 0);
    const VhdChannelStats st = VhdImage::channel_stats(*rig.channel);
    EXPECT_EQ(st.allocations, blocks.size());
    EXPECT_LE(st.alloc_rounds, 2u);
  }
  auto f = vhd_open_file(path, {});
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f->allocated_blocks, blocks.size());
  for (uint32_t b = 0; b < f->bat.size(); ++b) {
    const bool written = std::find(blocks.begin(), blocks.end(), b) != blocks.end();
    EXPECT_EQ(f->bat[b] != vhd::kBatUnused, written) << "block " << b;
  }
  const img::CheckReport rep = img::check(path, false);
  EXPECT_EQ(rep.status, 0) << (rep.errors.empty() ? "" : rep.errors.front());
  auto img = open_vhd(path, true);
  ASSERT_TRUE(img);
  ImageRig rig(*img);
  for (size_t i = 0; i < blocks.size(); ++i) {
    AlignedBuffer buf(4096);
    iovec v{buf.p, 4096};
    WaitOp op;
    rig.reactor->call([&] {
      op.prep_read(&v, 1, uint64_t{blocks[i]} * 2 * kMiB + 8192);
      rig.channel->submit(op);
    });
    ASSERT_EQ(op.wait(), 0);
    EXPECT_EQ(std::memcmp(buf.p, data[i].data(), 4096), 0) << "block " << blocks[i];
  }
}

// Discard of whole blocks in a differencing leaf: they read as the parent
// again; a partial block is left alone.
TEST(BlkVhd, DiscardPunchesWholeLeafBlocks) {
  TempDir dir;
  ASSERT_NO_FATAL_FAILURE(create(dir / "base.vhd", vhd::DiskType::kDynamic, kDisk));
  Shadow shadow(kDisk);
  std::mt19937_64 rng(9);
  {
    auto img = open_vhd(dir / "base.vhd");
    ImageRig rig(*img);
    ASSERT_NO_FATAL_FAILURE(shadow.random(rig, rng, 6, 16, 100));
  }
  const Shadow base = shadow;
  ASSERT_NO_FATAL_FAILURE(create(dir / "leaf.vhd", vhd::DiskType::kDifferencing, 0, dir / "base.vhd"));
  auto img = open_vhd(dir / "leaf.vhd");
  ASSERT_TRUE(img);
  if (!img->info().discard) GTEST_SKIP() << "filesystem cannot punch holes";
  EXPECT_EQ(img->info().discard_granularity, 2 * kMiB);
  ImageRig rig(*img);
  ASSERT_NO_FATAL_FAILURE(shadow.random(rig, rng, 6, 16, 100));
  WaitOp d;
  d.prep_discard(2 * kMiB - 512, 4 * kMiB + 1024, false);  // covers block 1 and 2 whole, 0 and 3 partly
  ASSERT_EQ(rig.run(d), 0);
  std::memcpy(shadow.bytes.data() + 2 * kMiB, base.bytes.data() + 2 * kMiB, 4 * kMiB);
  ASSERT_NO_FATAL_FAILURE(shadow.check_all(rig));
  EXPECT_GT(VhdImage::channel_stats(*rig.channel).punched_blocks, 0u);
  // And the punched blocks take writes again.
  ASSERT_NO_FATAL_FAILURE(shadow.random(rig, rng, 4, 16, 60));
  ASSERT_NO_FATAL_FAILURE(shadow.check_all(rig));
}

// What qemu-img made and qemu-io wrote reads the same through us as
// through `qemu-img convert -O raw`; and what we write, qemu-img reads.
TEST(BlkVhd, QemuImagesServedByteForByte) {
  if (!test::have_tool("qemu-img") || !test::have_tool("qemu-io")) GTEST_SKIP() << "qemu-utils not installed";
  TempDir dir;
  for (const char* sub : {"dynamic", "fixed"}) {
    SCOPED_TRACE(sub);
    const std::string img = dir / (std::string(sub) + ".vhd");
    const std::string raw = dir / (std::string(sub) + ".raw");
    auto q = [](const std::string& s) { return test::shell_quote(s); };
    ASSERT_EQ(
        test::run_command("qemu-img create -q -f vpc -o subformat=" + std::string(sub) + " " + q(img) + " 20M").status,
        0);
    const auto w = test::run_command(
        "qemu-io -f vpc -c 'write -P 0xab 0 64k' -c 'write -P 0x17 3M 1M' -c 'write -P "
        "0xc3 2095616 1024' -c 'write -P 0x99 17M 1536' " +
        q(img));
    ASSERT_EQ(w.status, 0) << w.out;
    ASSERT_EQ(test::run_command("qemu-img convert -f vpc -O raw " + q(img) + " " + q(raw)).status, 0);
    const std::vector<uint8_t> expect = file_bytes(raw);
    auto image = open_vhd(img);
    ASSERT_TRUE(image);
    ASSERT_EQ(image->info().size_bytes, expect.size());
    Shadow shadow(expect.size());
    std::memcpy(shadow.bytes.data(), expect.data(), expect.size());
    std::mt19937_64 rng(3);
    {
      ImageRig rig(*image);
      ASSERT_NO_FATAL_FAILURE(shadow.check_all(rig));
      // Our writes, then QEMU reads them.
      ASSERT_NO_FATAL_FAILURE(shadow.random(rig, rng, 6, 8, 100));
    }
    image.reset();
    ASSERT_EQ(test::run_command("qemu-img convert -f vpc -O raw " + q(img) + " " + q(raw)).status, 0);
    const std::vector<uint8_t> after = file_bytes(raw);
    ASSERT_EQ(after.size(), shadow.bytes.size());
    EXPECT_EQ(std::memcmp(after.data(), shadow.bytes.data(), after.size()), 0);
  }
}

// Hostile images: refused with the file and the field named, never served.
TEST(BlkVhd, HostileImagesRefused) {
  TempDir dir;
  const std::string path = dir / "h.vhd";
  ASSERT_NO_FATAL_FAILURE(create(path, vhd::DiskType::kDynamic, kDisk));
  std::string why;
  // The end footer gone (a truncated file), the copy at 0 intact: not raw.
  ::truncate(path.c_str(), static_cast<off_t>(test::file_size(path) - 512 + 100));
  auto fmt = detect_image_format(path, &why);
  EXPECT_EQ(fmt.error(), EINVAL);
  EXPECT_NE(why.find(path), std::string::npos) << why;
  EXPECT_FALSE(open_vbd_image(VbdParams{path, "auto"}, {}, &why));
  // A BAT entry beyond the end of the file.
  ASSERT_NO_FATAL_FAILURE(create(dir / "b.vhd", vhd::DiskType::kDynamic, kDisk));
  test::write_bat_entry(dir / "b.vhd", 3, 0x00FFFFF0);
  why.clear();
  auto img = VhdImage::open(dir / "b.vhd", {}, &why);
  EXPECT_FALSE(img);
  EXPECT_NE(why.find("b.vhd"), std::string::npos) << why;
  // A differencing disk whose parent is missing.
  ASSERT_NO_FATAL_FAILURE(create(dir / "p.vhd", vhd::DiskType::kDynamic, kDisk));
  ASSERT_NO_FATAL_FAILURE(create(dir / "c.vhd", vhd::DiskType::kDifferencing, 0, dir / "p.vhd"));
  ::unlink((dir / "p.vhd").c_str());
  why.clear();
  EXPECT_FALSE(VhdImage::open(dir / "c.vhd", {}, &why));
  EXPECT_NE(why.find("c.vhd"), std::string::npos) << why;
  // A format named explicitly wins over detection.
  EXPECT_EQ(*detect_image_format(dir / "c.vhd"), "vhd");
}

}  // namespace
}  // namespace xenpath
