#include "blkback/image_open.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

using Window = std::array<uint8_t, vhd::kFooterSize>;

// The size of a regular file or a block device (0 when unknown).
uint64_t size_of(int fd) noexcept {
  uint64_t size = 0;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return 0;
  if (!S_ISBLK(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  return ::ioctl(fd, BLKGETSIZE64, &size) == 0 ? size : 0;
}

bool read_window(int fd, uint64_t offset, Window& w) noexcept {
  return ::pread(fd, w.data(), w.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(w.size());
}

}  // namespace

bool probes_as_vhd(std::span<const uint8_t, 512> window) noexcept {
  // The footer's cookie, at the footer's start.
  return std::memcmp(window.data(), vhd::kFooterCookie.data(), vhd::kFooterCookie.size()) == 0;
}

bool ProbeGuard::refuses(std::span<const uint8_t> data) const noexcept {
  if (data.size() != block_len) return true;  // not the whole block: nothing to decide on
  // The window as the file would hold it: the written block where it
  // covers the window, the file's bytes past the writable end.
  Window w = file_window;
  const uint64_t end = block + block_len;
  for (size_t i = 0; i < w.size() && window + i < end; ++i) {
    if (window + i >= block) w[i] = data[window + i - block];
  }
  return probes_as_vhd(w);
}

std::unique_ptr<ProbeGuard> make_probe_guard(uint64_t file_size, uint64_t writable_end, uint32_t block_len,
                                             std::span<const uint8_t, 512> file_window) noexcept {
  if (file_size < vhd::kFooterSize || block_len < vhd::kFooterSize || (block_len & (block_len - 1)) != 0) {
    return nullptr;  // no window to probe, or no block to speak of
  }
  writable_end = writable_end / block_len * block_len;
  const uint64_t window = file_size - vhd::kFooterSize;
  if (writable_end == 0 || window >= writable_end) return nullptr;  // no guest write reaches the window
  auto g = std::unique_ptr<ProbeGuard>(new (std::nothrow) ProbeGuard);
  if (!g) return nullptr;
  g->block = writable_end - block_len;
  g->block_len = block_len;
  g->window = window;
  std::memcpy(g->file_window.data(), file_window.data(), g->file_window.size());
  // The writable end is at most the file's size, so the window starts in
  // the last block (or later): no other block can change it.
  if (g->window < g->block) return nullptr;
  return g;
}

Result<std::unique_ptr<ProbeGuard>> probe_guard_for(const std::string& path, uint64_t writable_end,
                                                    uint32_t block_len) noexcept {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unexpected_errno();
  const uint64_t size = size_of(fd);
  Window w{};
  const bool got = size >= w.size() && read_window(fd, size - w.size(), w);
  const int err = errno;
  ::close(fd);
  if (size < w.size()) return std::unique_ptr<ProbeGuard>();
  if (!got) return unexpected(err != 0 ? err : EIO);
  return make_probe_guard(size, std::min(writable_end, size), block_len, w);
}

Result<std::string> detect_image_format(const std::string& path, std::string* why) noexcept {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unexpected_errno();
  const uint64_t size = size_of(fd);
  Window w{};
  const bool end = size >= w.size() && read_window(fd, size - w.size(), w) && probes_as_vhd(w);
  const bool start = size >= w.size() && read_window(fd, 0, w) && probes_as_vhd(w);
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

Result<std::unique_ptr<Image>> open_vbd_image(const VbdParams& params, const ImageOpenOptions& opts, std::string* why,
                                              bool* probed_raw) noexcept {
  std::string format = params.format;
  if (probed_raw != nullptr) *probed_raw = false;
  if (format == "auto") {
    auto detected = detect_image_format(params.path, why);
    if (!detected) return unexpected(detected.error());
    format = *detected;
    if (probed_raw != nullptr) *probed_raw = format == "raw";
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
