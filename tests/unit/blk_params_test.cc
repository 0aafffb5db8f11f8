// The toolstack's params key: the path and format forms xl/libxl write.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <vector>

#include "blkback/blk_device.h"
#include "blkback/image_open.h"

namespace xenpath {
namespace {

TEST(BlkParams, PathsAndFormats) {
  EXPECT_EQ(parse_vbd_params("/var/lib/xen/disk.img")->path, "/var/lib/xen/disk.img");
  EXPECT_EQ(parse_vbd_params("aio:/srv/d.raw")->path, "/srv/d.raw");
  EXPECT_EQ(parse_vbd_params("raw:/srv/d.raw")->format, "raw");
  EXPECT_EQ(parse_vbd_params("phy:/dev/vg0/lv1")->path, "/dev/vg0/lv1");
  EXPECT_EQ(parse_vbd_params("file:/x")->path, "/x");
  EXPECT_EQ(parse_vbd_params("vhd:/srv/child.vhd")->format, "vhd");
  EXPECT_EQ(parse_vbd_params("vhd:/srv/child.vhd")->path, "/srv/child.vhd");
  // A bare path: the file says (image_open.h).
  EXPECT_EQ(parse_vbd_params("/srv/child.vhd")->format, "auto");
  // A path may hold a colon; it is not a format prefix when it starts with '/'.
  EXPECT_EQ(parse_vbd_params("/dev/disk/by-path/pci-0000:00:1f.2")->path, "/dev/disk/by-path/pci-0000:00:1f.2");
  // Formats this backend does not serve, unknown prefixes, relative paths.
  EXPECT_EQ(parse_vbd_params("qcow2:/srv/d.qcow2").error(), EOPNOTSUPP);
  EXPECT_EQ(parse_vbd_params("vhdx:/srv/d.vhdx").error(), EOPNOTSUPP);
  EXPECT_EQ(parse_vbd_params("nbd:host:10809").error(), EINVAL);
  EXPECT_EQ(parse_vbd_params("disk.img").error(), EINVAL);
  EXPECT_EQ(parse_vbd_params("aio:disk.img").error(), EINVAL);
  // An empty drive (a cdrom without media) has nothing to open yet.
  EXPECT_EQ(parse_vbd_params("").error(), ENOENT);
  EXPECT_EQ(parse_vbd_params("aio:").error(), ENOENT);
}

using Window = std::array<uint8_t, 512>;

Window window_with(const char* at0) {
  Window w{};
  std::memcpy(w.data(), at0, std::strlen(at0));
  return w;
}

// The probe's predicate: the footer cookie at the window's start, nothing else.
TEST(BlkProbeGuard, PredicateIsTheCookie) {
  EXPECT_TRUE(probes_as_vhd(window_with("conectix")));
  EXPECT_TRUE(probes_as_vhd(window_with("conectix and then garbage, no valid footer")));
  EXPECT_FALSE(probes_as_vhd(window_with("conectiX")));
  EXPECT_FALSE(probes_as_vhd(window_with(" conectix")));
  EXPECT_FALSE(probes_as_vhd(Window{}));
}

// A file whose size is a multiple of the block: the window is the last 512
// bytes of the last block, all of it written by the guest.
TEST(BlkProbeGuard, WholeBlocks) {
  const Window none{};
  for (uint32_t block : {512u, 4096u}) {
    auto g = make_probe_guard(1 << 20, 1 << 20, block, none);
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->block, (1u << 20) - block);
    EXPECT_EQ(g->block_len, block);
    EXPECT_EQ(g->window, (1u << 20) - 512);
    std::vector<uint8_t> data(block, 0xAB);
    EXPECT_FALSE(g->refuses(data));
    std::memcpy(data.data() + block - 512, "conectix", 8);
    EXPECT_TRUE(g->refuses(data));
    // The cookie elsewhere in the block is only data.
    std::vector<uint8_t> other(block, 0);
    std::memcpy(other.data(), "conectix", 8);
    EXPECT_EQ(g->refuses(other), block == 512);
    // A wrong length is never decided on.
    EXPECT_TRUE(g->refuses(std::span(data.data(), block / 2)));
  }
}

// A file of 1 MiB + 100 bytes: the guest writes 1 MiB, the window starts
// 100 bytes into the last 512-byte block; with 4 KiB blocks 3684 bytes in.
// Writes of a window that straddles the writable end combine with the
// file's own tail.
TEST(BlkProbeGuard, FileSizeNotAMultipleOfTheBlock) {
  const uint64_t size = (1 << 20) + 100;
  auto g = make_probe_guard(size, 1 << 20, 512, Window{});
  ASSERT_NE(g, nullptr);
  std::vector<uint8_t> data(512, 0);
  std::memcpy(data.data() + 100, "conectix", 8);
  EXPECT_TRUE(g->refuses(data));
  std::memset(data.data(), 0, data.size());
  std::memcpy(data.data(), "conectix", 8);
  EXPECT_FALSE(g->refuses(data));
  auto g4 = make_probe_guard(size, 1 << 20, 4096, Window{});
  ASSERT_NE(g4, nullptr);
  std::vector<uint8_t> d4(4096, 0);
  std::memcpy(d4.data() + 4096 - 412, "conectix", 8);
  EXPECT_TRUE(g4->refuses(d4));
  // The window straddles the writable end: its first 5 bytes are the
  // guest's, the rest the file's (which holds "tix" there): the guest's
  // "conec" completes the cookie.
  const uint64_t odd = (1 << 20) + 507;
  Window tail{};
  std::memcpy(tail.data() + 5, "tix", 3);
  auto gs = make_probe_guard(odd, 1 << 20, 512, tail);
  ASSERT_NE(gs, nullptr);
  EXPECT_EQ(gs->window, (1u << 20) - 5);
  std::vector<uint8_t> ds(512, 0);
  std::memcpy(ds.data() + 507, "conec", 5);
  EXPECT_TRUE(gs->refuses(ds));
  ds[507] = 'C';
  EXPECT_FALSE(gs->refuses(ds));
  // Past the writable end entirely (a 4 KiB-block disk with a 600-byte
  // tail): no guest write reaches the window, no guard.
  EXPECT_EQ(make_probe_guard((1 << 20) + 600, 1 << 20, 4096, Window{}), nullptr);
  // Too small to probe; a bad block size.
  EXPECT_EQ(make_probe_guard(511, 0, 512, Window{}), nullptr);
  EXPECT_EQ(make_probe_guard(1 << 20, 1 << 20, 768, Window{}), nullptr);
}

}  // namespace
}  // namespace xenpath
