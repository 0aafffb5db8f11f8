// xenpath-img's logic (tools/xenpath_img_main.cc is only its command line):
// create, snapshot, info, check [--repair], map, convert and coalesce on
// raw files and VHD chains. Defined in vhd_tool.cc (create, snapshot, info,
// check, map) and vhd_tool_copy.cc (ChainReader, convert, coalesce).
//
// Why here and not in a tools/img/ library: it is built only on blkback's
// VHD layer (vhd_file, vhd_format), it is unit- and integration-tested like
// the rest of that layer, and blkback/'s glob adds it to xenpath_blkback
// with no build change; being a static library, the daemon links none of
// it (nothing there references these symbols).
//
// I/O is blocking, only of allocated data: copy_file_range(2) of whole
// runs where the bytes are copied as they are (convert to raw, coalesce),
// pread/pwrite of whole blocks where they are looked at (raw to vhd
// skips zero blocks), syncs per batch of blocks; nothing here runs on a
// reactor. Threads: functions called from one thread; `interrupt`
// may be set from a signal handler.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include "blkback/vhd_file.h"

namespace xenpath::img {

// "10G", "512M", "64K", "4096" (binary multiples; T too). nullopt if malformed or overflowing.
std::optional<uint64_t> parse_size(const std::string& s);
std::string human_size(uint64_t bytes);

// A file is a VHD when the last 512 bytes (or, damaged, the first 512) hold
// a footer that validates.
bool looks_like_vhd(const std::string& path);

struct CreateOptions {
  std::string format = "vhd";  // "raw" or "vhd"
  vhd::DiskType type = vhd::DiskType::kDynamic;
  uint64_t size = 0;
  uint32_t block_size = vhd::kDefaultBlockSize;
};
VhdStatus create(const std::string& path, const CreateOptions& opts);
VhdStatus snapshot(const std::string& parent, const std::string& child);

// format, virtual size, the chain with each level's type, UUID, sizes and
// allocation, and the warnings opening it produced.
VhdResult<nlohmann::json> info(const std::string& path);
std::string info_text(const nlohmann::json& info);

// Exit status of check: 0 consistent (or repaired), 1 problems found,
// 2 could not be checked (the file cannot be opened or read).
struct CheckReport {
  int status = 0;
  std::vector<std::string> errors;    // problems left
  std::vector<std::string> repaired;  // problems fixed by --repair
  std::vector<std::string> warnings;  // accepted oddities
};
// With `repair`, only the named file is written (never a parent), only:
// a footer restored from the copy at offset 0 when the end has none (and
// the file cut after the last whole block), BAT entries of blocks lying
// past the end of the file cleared, and the copy at 0 rewritten from the
// footer at the end when they differ.
CheckReport check(const std::string& path, bool repair);

// Allocated ranges [offset, offset + length) of the virtual disk per level
// (leaf first), from the BAT and the sector bitmaps, adjacent runs merged.
struct LevelMap {
  std::string path;
  std::string type;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
};
VhdResult<std::vector<LevelMap>> map(const std::string& path);

struct CopyOptions {
  std::function<void(uint64_t done, uint64_t total)> progress;  // called per block (or chunk)
  const std::atomic<bool>* interrupt = nullptr;                 // stop at the next consistent point
  bool force = false;                                           // coalesce: parent has other children
  // Copy allocated data with copy_file_range(2) (in the kernel); false:
  // pread/pwrite through a buffer, as where the kernel refuses (EXDEV...).
  bool in_kernel_copy = true;
  // Data written between two syncs (coalesce, raw -> vhd); 0: the default.
  uint64_t batch_bytes = 0;
};
struct CopyStats {
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t bytes_in_kernel = 0;  // of bytes_written, copied by copy_file_range
  uint64_t blocks = 0;           // blocks (or chunks) copied
  uint64_t total_blocks = 0;
  bool interrupted = false;
};

// vhd (a whole chain) -> raw, raw -> vhd dynamic. The destination is created
// (never overwritten). To raw: what no level holds stays a hole, what a
// level holds is copied as it is (without reading it: zeros a guest wrote
// stay allocated). To vhd: holes and all-zero blocks stay unallocated.
VhdResult<CopyStats> convert(const std::string& src, const std::string& dst, const std::string& out_format,
                             const CopyOptions& opts);

// Merges the differencing `child` into its parent: every sector the child
// holds is written into the parent (new parent blocks appended, existing
// ones updated in place, bitmaps OR-ed). Idempotent, no journal: while it
// runs and after a crash, reading through the child gives the same bytes
// (the child masks every sector being written in the parent), and the
// parent file always ends with a valid footer (each batch writes the
// footer at the batch's new end before its blocks, then the blocks, then
// their BAT entries, with fdatasync between). Rerunning after a crash or an
// interrupt redoes the copy. The child is left in place (now redundant; its
// recorded parent timestamp is updated) for the caller to remove.
// Refused when another VHD in the child's folder has the same parent,
// unless opts.force (their view of the parent would change).
VhdResult<CopyStats> coalesce(const std::string& child, const CopyOptions& opts);

// Maps the virtual disk of a chain: per sector, the first level (leaf
// first) whose BAT and bitmap hold it; zeros when none does.
class ChainReader {
 public:
  explicit ChainReader(const VhdChain& chain) : chain_(chain), bitmaps_(chain.levels.size()) {}
  // Where the bytes of [off, off + len) come from (off and len multiples
  // of 512, inside the disk), in offset order: `len` bytes at `off`
  // (relative to the range) are in level `level`'s file at `file_off`, or
  // zeros when level == kZeros. Callers copy the pieces without reading
  // them (convert's copy_file_range).
  static constexpr size_t kZeros = SIZE_MAX;
  struct Piece {
    uint32_t off = 0;
    uint32_t len = 0;
    size_t level = kZeros;
    uint64_t file_off = 0;
  };
  VhdStatus plan(uint64_t off, uint32_t len, std::vector<Piece>& out);
  // Cheap: whether any level has a block (or fixed data) overlapping the range.
  [[nodiscard]] bool any_allocated(uint64_t off, uint64_t len) const noexcept;

 private:
  struct CachedBitmap {
    uint32_t block = vhd::kBatUnused;
    std::vector<uint8_t> bits;
  };
  VhdResult<const std::vector<uint8_t>*> bitmap(size_t level, uint32_t block);

  const VhdChain& chain_;
  std::vector<CachedBitmap> bitmaps_;
  std::vector<uint8_t> filled_;
};

}  // namespace xenpath::img
