// VHD files on disk, control plane: open and validate one file, resolve and
// open a differencing chain, create fixed/dynamic/differencing images.
// Blocking pread/pwrite at open/create time only; the datapath
// (image_vhd) takes a VhdChain and does its I/O on io_uring.
//
// Open validates everything the datapath will trust without looking again:
// cookies, checksums, versions, sizes (<= 2040 GiB), header/BAT/locator
// positions inside the file, every allocated block inside the file and
// clear of metadata and of every other block. A chain is refused when a
// parent cannot be found, its UUID differs from what the child recorded,
// it loops, or it is deeper than the bound. Errors name the file and the
// field ("/srv/a.vhd: header checksum: stored ..., computed ...").
//
// Threads: no shared state. A VhdChain is owned by whoever opened it (the
// image that serves it); its levels' metadata is read-only after open
// except the leaf's, which the one thread writing the leaf keeps current.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "blkback/vhd_format.h"

namespace xenpath {

// An errno code for callers that only propagate it (EINVAL malformed,
// ENOENT parent missing, ELOOP loop, EMLINK too deep, EIO...) and a message
// naming the file and the field.
struct VhdError {
  int code = 0;
  std::string message;
};

template <typename T>
class [[nodiscard]] VhdResult {
 public:
  VhdResult(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  VhdResult(VhdError error) : error_(std::move(error)) {}  // NOLINT: implicit by design
  [[nodiscard]] bool has_value() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  T&& operator*() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  [[nodiscard]] const VhdError& error() const noexcept { return error_; }

 private:
  std::optional<T> value_;
  VhdError error_;
};
// Success or a VhdError (code 0 means success).
using VhdStatus = VhdError;
[[nodiscard]] inline bool vhd_ok(const VhdStatus& s) noexcept { return s.code == 0; }

// One open VHD file. Movable, owns its fd.
struct VhdLevel {
  VhdLevel() = default;
  VhdLevel(VhdLevel&& o) noexcept;
  VhdLevel& operator=(VhdLevel&& o) noexcept;
  VhdLevel(const VhdLevel&) = delete;
  VhdLevel& operator=(const VhdLevel&) = delete;
  ~VhdLevel();

  std::string path;  // as opened (a parent's: the resolved path)
  int fd = -1;
  bool read_only = true;
  bool direct = false;  // opened O_DIRECT
  dev_t dev = 0;
  ino_t ino = 0;
  int64_t mtime = 0;  // Unix seconds, at open
  uint64_t file_size = 0;
  vhd::Footer footer;             // the footer at the end (or the copy, see footer_from_copy)
  bool footer_from_copy = false;  // only with VhdOpenOptions::accept_footer_copy
  uint64_t footer_offset = 0;     // where the footer is: file_size - 512
  // Dynamic and differencing only:
  vhd::DynamicHeader header;
  vhd::BlockLayout layout;
  std::vector<uint32_t> bat;  // host order, layout.entries long; vhd::kBatUnused = unallocated
  // First byte after all metadata and allocated blocks: where the next
  // block goes (vhd::BlockLayout::append_position) and where the footer
  // belongs. Fixed: current_size.
  uint64_t end_of_data = 0;
  uint32_t allocated_blocks = 0;
  // What a lenient open tolerated (check/repair reads these): blocks
  // dropped by drop_dangling_blocks, and a footer copy at 0 that differs
  // from the footer at the end.
  std::vector<uint32_t> dropped_blocks;
  bool footer_copy_differs = false;

  [[nodiscard]] uint64_t virtual_size() const noexcept { return footer.current_size; }
  [[nodiscard]] bool sparse() const noexcept { return footer.sparse(); }
  [[nodiscard]] bool differencing() const noexcept { return footer.differencing(); }
};

struct VhdOpenOptions {
  bool read_only = true;  // the leaf; parents are always O_RDONLY
  bool direct = false;    // O_DIRECT (the datapath's choice)
  // Levels allowed in a chain, leaf included.
  size_t max_depth = 16;
  // The parent timestamp a child records (blktap: the parent file's mtime
  // when the child was made) is compared with the parent's mtime; a
  // mismatch is a warning (copies and restores change mtimes) unless strict.
  bool strict_timestamps = false;
  // Open a file whose end has no valid footer using the copy at offset 0
  // (check/repair only; the datapath refuses such a file).
  bool accept_footer_copy = false;
  // Blocks lying (partly) beyond the end of the file are dropped from the
  // in-memory BAT with a warning instead of refusing the file (check/repair).
  bool drop_dangling_blocks = false;
};

// Levels leaf -> base: levels[0] is the file asked for, levels.back() is a
// fixed or dynamic disk. warnings: what was accepted but odd.
struct VhdChain {
  std::vector<VhdLevel> levels;
  std::vector<std::string> warnings;
  [[nodiscard]] VhdLevel& leaf() noexcept { return levels.front(); }
  [[nodiscard]] const VhdLevel& leaf() const noexcept { return levels.front(); }
  [[nodiscard]] uint64_t virtual_size() const noexcept { return levels.front().virtual_size(); }
};

// One file, without following its parent. `warnings` may be nullptr.
VhdResult<VhdLevel> vhd_open_file(const std::string& path, const VhdOpenOptions& opts,
                                  std::vector<std::string>* warnings = nullptr);
// The file and its parents (VhdOpenOptions::read_only applies to the leaf).
VhdResult<VhdChain> vhd_open_chain(const std::string& path, const VhdOpenOptions& opts);
// Where `child`'s parent is: candidates from the locators (W2ku, W2ru,
// MacX, in that order) and the parent unicode name in the child's folder,
// the existing ones, in order, without duplicates.
std::vector<std::string> vhd_parent_candidates(const VhdLevel& child, std::vector<std::string>* notes);

struct VhdCreateOptions {
  vhd::DiskType type = vhd::DiskType::kDynamic;
  uint64_t size = 0;  // bytes, multiple of 512 (differencing: 0 = the parent's)
  uint32_t block_size = vhd::kDefaultBlockSize;
  std::string parent;  // differencing: the parent's path
  bool overwrite = false;
};
// Creates the file (O_EXCL unless overwrite) and fsyncs it. Fixed images
// are sparse files (ftruncate) with the footer after the data; dynamic and
// differencing ones are footer copy, header, BAT, locators, footer. A
// differencing child records its parent's UUID, mtime and basename and
// three locators (MacX, W2ku, W2ru) with the parent's path relative to the
// child's folder, as blktap's vhd-util does.
VhdStatus vhd_create(const std::string& path, const VhdCreateOptions& opts);

vhd::Uuid vhd_random_uuid();

// Blocking full transfers (EINTR and short counts handled); false with
// errno set on failure, errno EIO on a premature end of file.
bool vhd_pread_full(int fd, void* buf, size_t len, uint64_t off);
bool vhd_pwrite_full(int fd, const void* buf, size_t len, uint64_t off);
// "<path>: <what>: <strerror>" for a failed call.
VhdError vhd_errno_error(const std::string& path, const std::string& what, int err);

}  // namespace xenpath
