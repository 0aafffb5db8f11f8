// The toolstack's params key: the path and format forms xl/libxl write.
#include <gtest/gtest.h>

#include "blkback/blk_device.h"

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

}  // namespace
}  // namespace xenpath
