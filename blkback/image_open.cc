#include "blkback/image_open.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "blkback/image_raw.h"
#include "blkback/image_vhd.h"
#include "blkback/vhd_format.h"

namespace xenpath {

namespace {

void say(std::string* why, const std::string& s) noexcept {
  if (why == nullptr) return;
  try {
    *why = s;
  } catch (...) {
  }
}

bool has_cookie(int fd, uint64_t offset) noexcept {
  char buf[8];
  return ::pread(fd, buf, sizeof buf, static_cast<off_t>(offset)) == static_cast<ssize_t>(sizeof buf) &&
         std::memcmp(buf, "conectix", sizeof buf) == 0;
}

}  // namespace

Result<std::string> detect_image_format(const std::string& path, std::string* why) noexcept {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unexpected_errno();
  uint64_t size = 0;
  struct stat st {};
  if (::fstat(fd, &st) == 0) {
    if (S_ISBLK(st.st_mode)) {
      if (::ioctl(fd, BLKGETSIZE64, &size) != 0) size = 0;
    } else {
      size = static_cast<uint64_t>(st.st_size);
    }
  }
  const bool end = size >= vhd::kFooterSize && has_cookie(fd, size - vhd::kFooterSize);
  const bool start = size >= vhd::kFooterSize && has_cookie(fd, 0);
  ::close(fd);
  if (end) return std::string("vhd");
  if (start) {
    say(why, path +
                 ": footer: no VHD footer in the last 512 bytes but a footer copy at offset 0 (a damaged or "
                 "truncated VHD; `xenpath-img check --repair` restores it, \"raw:\" serves the file as raw)");
    return unexpected(EINVAL);
  }
  return std::string("raw");
}

Result<std::unique_ptr<Image>> open_vbd_image(const VbdParams& params, const ImageOpenOptions& opts,
                                              std::string* why) noexcept {
  std::string format = params.format;
  if (format == "auto") {
    auto detected = detect_image_format(params.path, why);
    if (!detected) return unexpected(detected.error());
    format = *detected;
  }
  if (format == "vhd") {
    VhdImage::Options vo;
    vo.read_only = opts.read_only;
    vo.direct = opts.direct;
    vo.cache = opts.cache;
    auto img = VhdImage::open(params.path, vo, why);
    if (!img) return unexpected(img.error());
    return std::unique_ptr<Image>(std::move(*img));
  }
  if (format != "raw") return unexpected(EOPNOTSUPP);
  RawImage::Options ro;
  ro.read_only = opts.read_only;
  ro.direct = opts.direct;
  auto img = RawImage::open(params.path, ro);
  if (!img) return unexpected(img.error());
  return std::unique_ptr<Image>(std::move(*img));
}

}  // namespace xenpath
