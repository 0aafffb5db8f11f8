// xenpath-img's copy engine: ChainReader (where each byte of a chain's
// virtual disk comes from), BatchWriter (crash-consistent appends and
// in-place updates of a VHD), RangeCopier (copy_file_range with a bounce
// buffer fallback), and on them convert (vhd -> raw, raw -> vhd) and
// coalesce. Interface and threading: vhd_tool.h; the shared helpers:
// vhd_tool_internal.h.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "blkback/vhd_tool.h"
#include "blkback/vhd_tool_internal.h"

namespace xenpath::img {

namespace fs = std::filesystem;
using namespace vhd;
using namespace internal;

VhdResult<const std::vector<uint8_t>*> ChainReader::bitmap(size_t level, uint32_t block) {
  CachedBitmap& c = bitmaps_[level];
  if (c.block != block) {
    const VhdLevel& lv = chain_.levels[level];
    c.bits.resize(lv.layout.bitmap_bytes);
    if (!vhd_pread_full(lv.fd, c.bits.data(), c.bits.size(), BlockLayout::bitmap_offset(lv.bat[block]))) {
      c.block = kBatUnused;
      return vhd_errno_error(lv.path, fmt::format("reading the bitmap of block {}", block), errno);
    }
    c.block = block;
  }
  return &c.bits;
}

bool ChainReader::any_allocated(uint64_t off, uint64_t len) const noexcept {
  for (const VhdLevel& lv : chain_.levels) {
    const uint64_t end = std::min(off + len, lv.virtual_size());
    if (off >= end) continue;
    if (!lv.sparse()) return true;
    for (uint64_t b = off / lv.layout.block_size; b <= (end - 1) / lv.layout.block_size && b < lv.bat.size(); ++b) {
      if (lv.bat[b] != kBatUnused) return true;
    }
  }
  return false;
}

VhdStatus ChainReader::plan(uint64_t off, uint32_t len, std::vector<Piece>& out) {
  out.clear();
  const uint32_t nsect = len / kSectorSize;
  filled_.assign(nsect, 0);
  uint32_t remaining = nsect;
  auto take = [&](size_t level, uint64_t file_off, uint32_t idx, uint32_t n) {
    out.push_back(Piece{idx * kSectorSize, n * kSectorSize, level, file_off});
    std::fill_n(filled_.begin() + idx, n, 1);
    remaining -= n;
  };
  for (size_t li = 0; li < chain_.levels.size() && remaining > 0; ++li) {
    const VhdLevel& lv = chain_.levels[li];
    const uint64_t end = std::min<uint64_t>(off + len, lv.virtual_size());
    if (off >= end) continue;
    const uint32_t lim = static_cast<uint32_t>((end - off) / kSectorSize);
    if (!lv.sparse()) {
      for (uint32_t i = 0; i < lim;) {
        if (filled_[i]) {
          ++i;
          continue;
        }
        uint32_t n = 1;
        while (i + n < lim && !filled_[i + n]) ++n;
        take(li, off + uint64_t{i} * kSectorSize, i, n);
        i += n;
      }
      continue;
    }
    for (uint32_t i = 0; i < lim;) {
      const uint64_t v = off + uint64_t{i} * kSectorSize;
      const uint32_t b = lv.layout.block_of(v);
      const uint32_t sib = lv.layout.sector_in_block(v);
      const uint32_t in_block = std::min(lim - i, lv.layout.sectors_per_block - sib);
      if (b >= lv.bat.size() || lv.bat[b] == kBatUnused) {
        i += in_block;
        continue;
      }
      auto bm = bitmap(li, b);
      if (!bm) return bm.error();
      const std::vector<uint8_t>& bits = **bm;
      for (uint32_t k = 0; k < in_block;) {
        if (filled_[i + k] || !bitmap_test(bits, sib + k)) {
          ++k;
          continue;
        }
        uint32_t n = 1;
        while (k + n < in_block && !filled_[i + k + n] && bitmap_test(bits, sib + k + n)) ++n;
        take(li, lv.layout.sector_offset(lv.bat[b], sib + k), i + k, n);
        k += n;
      }
      i += in_block;
    }
  }
  for (uint32_t i = 0; i < nsect && remaining > 0;) {
    if (filled_[i]) {
      ++i;
      continue;
    }
    uint32_t n = 1;
    while (i + n < nsect && !filled_[i + n]) ++n;
    out.push_back(Piece{i * kSectorSize, n * kSectorSize, kZeros, 0});
    remaining -= n;
    i += n;
  }
  std::sort(out.begin(), out.end(), [](const Piece& a, const Piece& b) { return a.off < b.off; });
  return {};
}

namespace {

bool all_zero(const uint8_t* p, size_t n) {
  // Word-wise: this runs over every byte convert copies.
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w != 0) return false;
  }
  for (; i < n; ++i)
    if (p[i] != 0) return false;
  return true;
}

// Writes into a VHD open read-write in batches that keep the file
// consistent at every point of a crash. A batch holds appended blocks and
// data written in place into existing blocks (coalesce). (1) When the batch
// appends past the footer, the footer is first written at the batch's
// bound (fdatasync), so the file always ends with a valid footer; (2) the
// caller writes the data: each appended block's [bitmap][data] at the
// position place() gives (data page-aligned, as
// BlockLayout::append_position lays it out; the few bytes between blocks are
// not written: never read, a hole in a new file), in-place data where it
// belongs; (3) fdatasync; (4) the bitmaps of blocks updated in place and
// the BAT entries of appended ones; fdatasync. A crash before (4) leaves
// appended blocks no BAT entry names, space the next append reuses (it
// starts at end_of_data), and in-place data under bitmaps that do not show
// it yet (the child still masks it).
//
// A batch ends after batch_bytes of data: large enough that its two
// fdatasyncs (each an ext4 journal commit) are a small part of it, small
// enough that an interrupt (which finishes the batch) is answered within
// about a second. Measured on ext4/virtio (perf/vhd_coalesce.sh): see
// kDefaultBatchBytes.
class BatchWriter {
 public:
  BatchWriter(VhdLevel& lv, uint64_t batch_bytes)
      : lv_(lv),
        stride_(lv.layout.block_bytes() + 4096),
        max_blocks_(std::max<uint64_t>(1, batch_bytes / stride_)),
        batch_bytes_(batch_bytes) {}

  // The file offset where block `index`'s [bitmap][data] (block_bytes) go,
  // in the current batch; the caller writes them there before the next call.
  VhdResult<uint64_t> place(uint32_t index) {
    if (pending_.size() >= max_blocks_ || in_place_ + (cursor_ - start_) >= batch_bytes_) {
      if (VhdStatus s = flush(); !vhd_ok(s)) return s;
    }
    if (pending_.empty()) {
      start_ = lv_.layout.append_position(lv_.end_of_data);
      cursor_ = start_;
      const uint64_t bound = start_ + max_blocks_ * stride_;
      if (bound / kSectorSize >= kBatUnused) return fail(lv_.path, "file would grow past the BAT's 2 TiB reach", EFBIG);
      if (bound > lv_.footer_offset) {
        if (VhdStatus s = write_footer_at(lv_, bound); !vhd_ok(s)) return s;
        if (VhdStatus s = sync_fd(lv_.fd, lv_.path); !vhd_ok(s)) return s;
        lv_.footer_offset = bound;
        lv_.file_size = bound + kFooterSize;
      }
    }
    const uint64_t pos = lv_.layout.append_position(cursor_);
    pending_.emplace_back(index, pos);
    cursor_ = pos + lv_.layout.block_bytes();
    return pos;
  }
  // Gives back the last place (its content turned out all zero).
  void drop_last() {
    pending_.pop_back();
    cursor_ = pending_.empty() ? start_ : pending_.back().second + lv_.layout.block_bytes();
  }
  // The caller wrote `bytes` in place into existing blocks (or a fixed
  // disk) and, for a sparse file, block `block`'s bitmap becomes `bits`
  // (written after the data is durable).
  VhdStatus wrote_in_place(uint64_t bytes, uint32_t block, std::span<const uint8_t> bits) {
    in_place_ += bytes;
    if (!bits.empty()) bitmaps_.emplace_back(block, std::vector<uint8_t>(bits.begin(), bits.end()));
    if (in_place_ + (cursor_ - start_) >= batch_bytes_) return flush();
    return {};
  }
  VhdStatus flush() {
    if (pending_.empty() && bitmaps_.empty() && in_place_ == 0) return {};
    if (VhdStatus s = sync_fd(lv_.fd, lv_.path); !vhd_ok(s)) return s;
    for (const auto& [block, bits] : bitmaps_) {
      if (!vhd_pwrite_full(lv_.fd, bits.data(), bits.size(), BlockLayout::bitmap_offset(lv_.bat[block]))) {
        return vhd_errno_error(lv_.path, fmt::format("writing the bitmap of block {}", block), errno);
      }
    }
    std::vector<uint32_t> blocks;
    for (const auto& [index, pos] : pending_) {
      lv_.bat[index] = static_cast<uint32_t>(pos / kSectorSize);
      blocks.push_back(index);
    }
    if (VhdStatus s = write_bat_entries(lv_, blocks); !vhd_ok(s)) return s;
    if (!blocks.empty() || !bitmaps_.empty()) {
      if (VhdStatus s = sync_fd(lv_.fd, lv_.path); !vhd_ok(s)) return s;
    }
    if (!pending_.empty()) lv_.end_of_data = std::max(lv_.end_of_data, cursor_);
    lv_.allocated_blocks += static_cast<uint32_t>(pending_.size());
    written_ += cursor_ - start_;
    pending_.clear();
    bitmaps_.clear();
    in_place_ = 0;
    start_ = cursor_ = 0;
    return {};
  }
  // Flushes, then moves the footer to the end of the data and cuts the
  // file there (the old footer stays the file's end until the cut).
  VhdStatus finish() {
    if (VhdStatus s = flush(); !vhd_ok(s)) return s;
    if (lv_.footer_offset > lv_.end_of_data) {
      if (VhdStatus s = write_footer_at(lv_, lv_.end_of_data); !vhd_ok(s)) return s;
      if (VhdStatus s = sync_fd(lv_.fd, lv_.path); !vhd_ok(s)) return s;
      if (::ftruncate(lv_.fd, static_cast<off_t>(lv_.end_of_data + kFooterSize)) != 0) {
        return vhd_errno_error(lv_.path, "ftruncate", errno);
      }
      if (::fsync(lv_.fd) != 0) return vhd_errno_error(lv_.path, "fsync", errno);
      lv_.footer_offset = lv_.end_of_data;
      lv_.file_size = lv_.end_of_data + kFooterSize;
    }
    return {};
  }
  // Bytes of appended blocks made durable.
  [[nodiscard]] uint64_t bytes_appended() const noexcept { return written_; }

 private:
  VhdLevel& lv_;
  uint64_t stride_;      // the most one appended block takes (alignment gap included)
  uint64_t max_blocks_;  // appended blocks per batch
  uint64_t batch_bytes_;
  uint64_t start_ = 0;  // [start_, cursor_): the batch's appended blocks
  uint64_t cursor_ = 0;
  uint64_t in_place_ = 0;
  uint64_t written_ = 0;
  std::vector<std::pair<uint32_t, uint64_t>> pending_;              // appended: block, position
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> bitmaps_;  // updated in place: block, bitmap
};

// Copies file ranges in the kernel with copy_file_range(2): the data does
// not pass through user memory (on ext4 a page-cache to page-cache splice;
// on file systems with reflink or server-side copy, XFS, Btrfs, NFS 4.2,
// none moves at all). Where the kernel refuses (EXDEV across file systems,
// EOPNOTSUPP, EINVAL, ENOSYS) or when told to, pread/pwrite through a
// bounce buffer. One per operation, on its thread.
class RangeCopier {
 public:
  explicit RangeCopier(bool in_kernel) : in_kernel_(in_kernel) {}

  // [in_off, in_off + len) of `in` to `out` at out_off; false with errno
  // set on failure (EIO on a premature end of `in`).
  bool copy(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len) {
    while (len > 0 && in_kernel_) {
      auto io = static_cast<loff_t>(in_off);
      auto oo = static_cast<loff_t>(out_off);
      const ssize_t n = ::copy_file_range(in, &io, out, &oo, std::min<uint64_t>(len, 1u << 30), 0);
      if (n > 0) {
        in_off += static_cast<uint64_t>(n);
        out_off += static_cast<uint64_t>(n);
        len -= static_cast<uint64_t>(n);
        in_kernel_bytes_ += static_cast<uint64_t>(n);
      } else if (n == 0) {
        errno = EIO;
        return false;
      } else if (errno == EXDEV || errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS) {
        in_kernel_ = false;
      } else if (errno != EINTR) {
        return false;
      }
    }
    if (len > 0 && bounce_.empty()) bounce_.resize(kBounce);
    while (len > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(len, kBounce));
      if (!vhd_pread_full(in, bounce_.data(), n, in_off) || !vhd_pwrite_full(out, bounce_.data(), n, out_off)) {
        return false;
      }
      in_off += n;
      out_off += n;
      len -= n;
    }
    return true;
  }
  [[nodiscard]] uint64_t in_kernel_bytes() const noexcept { return in_kernel_bytes_; }

 private:
  // Small enough to stay in the CPU cache between the read and the write
  // (cp uses 128 KiB): the copies through user memory are what costs here.
  static constexpr size_t kBounce = 256u << 10;
  bool in_kernel_;
  uint64_t in_kernel_bytes_ = 0;
  std::vector<uint8_t> bounce_;
};

bool interrupted(const CopyOptions& o) { return o.interrupt != nullptr && o.interrupt->load(); }

// Data between two syncs, measured (perf/vhd_coalesce.sh, 1 GiB, ext4 on
// virtio, 2 cores): see docs/vhd.md.
constexpr uint64_t kDefaultBatchBytes = 256ull << 20;

uint64_t batch_bytes(const CopyOptions& o) { return o.batch_bytes != 0 ? o.batch_bytes : kDefaultBatchBytes; }

VhdResult<CopyStats> vhd_to_raw(const std::string& src, const std::string& dst, const CopyOptions& opts) {
  VhdOpenOptions o;
  auto chain = vhd_open_chain(src, o);
  if (!chain) return chain.error();
  const uint64_t size = chain->virtual_size();
  Fd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (out.fd < 0) return vhd_errno_error(dst, "create", errno);
  if (::ftruncate(out.fd, static_cast<off_t>(size)) != 0) return vhd_errno_error(dst, "ftruncate", errno);
  constexpr uint32_t kChunk = 8u << 20;
  ChainReader reader(*chain);
  RangeCopier copier(opts.in_kernel_copy);
  std::vector<ChainReader::Piece> pieces;
  CopyStats st;
  st.total_blocks = (size + kChunk - 1) / kChunk;
  for (uint64_t off = 0; off < size; off += kChunk) {
    if (interrupted(opts)) {
      st.interrupted = true;
      break;
    }
    const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(kChunk, size - off));
    if (reader.any_allocated(off, len)) {
      if (VhdStatus s = reader.plan(off, len, pieces); !vhd_ok(s)) return s;
      bool any = false;
      // Zero pieces stay the holes ftruncate made.
      for (const ChainReader::Piece& p : pieces) {
        if (p.level == ChainReader::kZeros) continue;
        const VhdLevel& lv = chain->levels[p.level];
        if (!copier.copy(lv.fd, p.file_off, out.fd, off + p.off, p.len)) {
          return vhd_errno_error(dst, fmt::format("copying 0x{:x} of {}", p.file_off, lv.path), errno);
        }
        st.bytes_read += p.len;
        st.bytes_written += p.len;
        any = true;
      }
      if (any) ++st.blocks;
    }
    if (opts.progress) opts.progress(off + len, size);
  }
  if (::fsync(out.fd) != 0) return vhd_errno_error(dst, "fsync", errno);
  st.bytes_in_kernel = copier.in_kernel_bytes();
  return st;
}

VhdResult<CopyStats> raw_to_vhd(const std::string& src, const std::string& dst, const CopyOptions& opts) {
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.fd < 0) return vhd_errno_error(src, "open", errno);
  struct stat st {};
  if (::fstat(in.fd, &st) != 0) return vhd_errno_error(src, "fstat", errno);
  const uint64_t src_size = static_cast<uint64_t>(st.st_size);
  const uint64_t size = (src_size + kSectorSize - 1) / kSectorSize * kSectorSize;
  VhdCreateOptions co;
  co.type = DiskType::kDynamic;
  co.size = size;
  if (VhdStatus s = vhd_create(dst, co); !vhd_ok(s)) return s;
  VhdOpenOptions oo;
  oo.read_only = false;
  auto lv = vhd_open_file(dst, oo);
  if (!lv) return lv.error();
  BatchWriter app(*lv, batch_bytes(opts));
  const BlockLayout& l = lv->layout;
  // Read, not copied in the kernel: all-zero blocks stay unallocated, which
  // takes looking at the data (as cp --sparse=always does).
  std::vector<uint8_t> buf(l.block_bytes());
  uint8_t* bm = buf.data();
  uint8_t* d = bm + l.bitmap_bytes;
  CopyStats cs;
  cs.total_blocks = l.entries;
  for (uint32_t b = 0; b < l.entries; ++b) {
    if (interrupted(opts)) {
      cs.interrupted = true;
      break;
    }
    const uint64_t start = uint64_t{b} * l.block_size;
    if (start >= src_size) break;
    const uint64_t n = std::min<uint64_t>(l.block_size, src_size - start);
    // Holes of a sparse source are skipped without reading them.
    const off_t data = ::lseek(in.fd, static_cast<off_t>(start), SEEK_DATA);
    if (data >= 0 && static_cast<uint64_t>(data) < start + n) {
      if (!vhd_pread_full(in.fd, d, n, start)) return vhd_errno_error(src, "read", errno);
      cs.bytes_read += n;
      if (n < l.block_size) std::memset(d + n, 0, l.block_size - n);
      if (!all_zero(d, n)) {
        auto pos = app.place(b);
        if (!pos) return pos.error();
        std::memset(bm, 0, l.bitmap_bytes);
        bitmap_set(
            std::span<uint8_t>(bm, l.bitmap_bytes), 0,
            static_cast<uint32_t>((std::min<uint64_t>(l.block_size, size - start) + kSectorSize - 1) / kSectorSize));
        if (!vhd_pwrite_full(lv->fd, buf.data(), buf.size(), *pos)) return vhd_errno_error(dst, "write", errno);
        ++cs.blocks;
      }
    }
    if (opts.progress) opts.progress(start + n, src_size);
  }
  if (VhdStatus s = app.finish(); !vhd_ok(s)) return s;
  cs.bytes_written = app.bytes_appended();
  return cs;
}

// Other VHDs in `dir` naming `parent_uuid` as their parent (bounded scan).
std::vector<std::string> other_children(const std::string& dir, const Uuid& parent_uuid, dev_t dev, ino_t ino) {
  std::vector<std::string> out;
  std::error_code ec;
  size_t seen = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (++seen > 100000) break;
    if (!e.is_regular_file(ec)) continue;
    const std::string p = e.path().string();
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || (st.st_dev == dev && st.st_ino == ino)) continue;
    if (!looks_like_vhd(p)) continue;
    VhdOpenOptions o;
    auto lv = vhd_open_file(p, o);
    if (lv && lv->differencing() && lv->header.parent_uuid == parent_uuid) out.push_back(p);
  }
  return out;
}

}  // namespace

VhdResult<CopyStats> convert(const std::string& src, const std::string& dst, const std::string& out_format,
                             const CopyOptions& opts) {
  const bool src_vhd = looks_like_vhd(src);
  if (out_format == "raw") {
    if (!src_vhd) return fail(src, "not a VHD (raw to raw is cp --sparse=always)");
    return vhd_to_raw(src, dst, opts);
  }
  if (out_format == "vhd") {
    if (src_vhd) return fail(src, "already a VHD (convert it to raw first, or snapshot it)");
    return raw_to_vhd(src, dst, opts);
  }
  return fail(dst, "output format \"" + out_format + "\" (raw or vhd)");
}

VhdResult<CopyStats> coalesce(const std::string& child_path, const CopyOptions& opts) {
  VhdOpenOptions ro;
  auto chain = vhd_open_chain(child_path, ro);
  if (!chain) return chain.error();
  const VhdLevel& child = chain->leaf();
  if (!child.differencing()) return fail(child_path, "not a differencing image: nothing to coalesce");
  const std::string parent_path = chain->levels[1].path;
  if (child.virtual_size() != chain->levels[1].virtual_size()) {
    return fail(child_path, fmt::format("footer current size: {} differs from the parent's {}", child.virtual_size(),
                                        chain->levels[1].virtual_size()));
  }
  if (!opts.force) {
    const auto others = other_children(fs::path(child.path).parent_path().string().empty()
                                           ? std::string(".")
                                           : fs::path(child.path).parent_path().string(),
                                       chain->levels[1].footer.uuid, child.dev, child.ino);
    if (!others.empty()) {
      return fail(parent_path,
                  fmt::format("has other children ({}{}): coalescing would change what they read "
                              "(--force to do it anyway)",
                              others.front(), others.size() > 1 ? ", ..." : ""),
                  EBUSY);
    }
  }
  VhdOpenOptions rw;
  rw.read_only = false;
  auto parent = vhd_open_file(parent_path, rw);
  if (!parent) return parent.error();
  if (parent->footer.uuid != child.header.parent_uuid) return fail(parent_path, "changed while opening (unique id)");
  if (parent->sparse() && parent->layout.block_size != child.layout.block_size) {
    return fail(parent_path, fmt::format("header block size: {} differs from the child's {}", parent->layout.block_size,
                                         child.layout.block_size));
  }
  // One coalesce at a time per parent (and child).
  if (::flock(parent->fd, LOCK_EX | LOCK_NB) != 0) return vhd_errno_error(parent_path, "flock", errno);

  std::vector<uint32_t> blocks;
  for (uint32_t b = 0; b < child.bat.size(); ++b)
    if (child.bat[b] != kBatUnused) blocks.push_back(b);
  // In the child's file order: sequential reads.
  std::sort(blocks.begin(), blocks.end(), [&](uint32_t a, uint32_t b) { return child.bat[a] < child.bat[b]; });
  const BlockLayout& cl = child.layout;
  const uint64_t vs = child.virtual_size();
  CopyStats st;
  st.total_blocks = blocks.size();
  std::vector<uint8_t> cbm(cl.bitmap_bytes);
  std::vector<uint8_t> pbm(parent->sparse() ? parent->layout.bitmap_bytes : 0);
  BatchWriter app(*parent, batch_bytes(opts));
  RangeCopier copier(opts.in_kernel_copy);
  const uint64_t total_bytes = uint64_t{blocks.size()} * cl.block_size;
  for (uint32_t b : blocks) {
    if (interrupted(opts)) {
      st.interrupted = true;
      break;
    }
    const uint64_t coff = BlockLayout::bitmap_offset(child.bat[b]);
    if (parent->sparse() && b >= parent->bat.size()) return fail(parent_path, fmt::format("no BAT entry {}", b));
    if (parent->sparse() && parent->bat[b] == kBatUnused) {
      // A new parent block: the child's bitmap and data as they are, in one
      // copy (sectors the child does not hold keep falling through to the
      // parent's own parent).
      auto pos = app.place(b);
      if (!pos) return pos.error();
      if (!copier.copy(child.fd, coff, parent->fd, *pos, cl.block_bytes())) {
        return vhd_errno_error(parent_path, fmt::format("copying block {} from {}", b, child.path), errno);
      }
      st.bytes_read += cl.block_bytes();
    } else {
      // An existing one: the child's runs of sectors in place, then (after
      // the batch's sync) the OR of the bitmaps.
      if (!vhd_pread_full(child.fd, cbm.data(), cbm.size(), coff)) return vhd_errno_error(child.path, "read", errno);
      st.bytes_read += cbm.size();
      const uint64_t vbase = uint64_t{b} * cl.block_size;
      uint64_t in_place = 0;
      VhdStatus s = for_each_set_run(cbm, cl.sectors_per_block, [&](uint32_t first, uint32_t n) -> VhdStatus {
        const uint64_t v = vbase + uint64_t{first} * kSectorSize;
        if (v >= vs) return {};
        const uint64_t bytes = std::min<uint64_t>(uint64_t{n} * kSectorSize, vs - v);
        const uint64_t poff = parent->sparse() ? parent->layout.sector_offset(parent->bat[b], first) : v;
        if (!copier.copy(child.fd, cl.sector_offset(child.bat[b], first), parent->fd, poff, bytes)) {
          return vhd_errno_error(parent_path, fmt::format("copying block {} from {}", b, child.path), errno);
        }
        st.bytes_read += bytes;
        st.bytes_written += bytes;
        in_place += bytes;
        return {};
      });
      if (!vhd_ok(s)) return s;
      if (parent->sparse()) {
        const uint64_t poff = BlockLayout::bitmap_offset(parent->bat[b]);
        if (!vhd_pread_full(parent->fd, pbm.data(), pbm.size(), poff))
          return vhd_errno_error(parent_path, "read", errno);
        for (size_t i = 0; i < pbm.size() && i < cl.bitmap_bytes; ++i) pbm[i] |= cbm[i];
      }
      if (VhdStatus w = app.wrote_in_place(in_place, b, pbm); !vhd_ok(w)) return w;
    }
    ++st.blocks;
    if (opts.progress) opts.progress(st.blocks * cl.block_size, total_bytes);
  }
  if (VhdStatus s = app.finish(); !vhd_ok(s)) return s;
  st.bytes_written += app.bytes_appended();
  st.bytes_in_kernel = copier.in_kernel_bytes();
  if (::fsync(parent->fd) != 0) return vhd_errno_error(parent_path, "fsync", errno);
  if (st.interrupted) return st;
  // The parent's mtime moved: the child records it so the chain opens
  // without a timestamp warning.
  struct stat pst {};
  if (::fstat(parent->fd, &pst) != 0) return vhd_errno_error(parent_path, "fstat", errno);
  Fd cfd(::open(child.path.c_str(), O_RDWR | O_CLOEXEC));
  if (cfd.fd < 0) return vhd_errno_error(child.path, "open", errno);
  DynamicHeader h = child.header;
  h.parent_timestamp = vhd_time(pst.st_mtim.tv_sec);
  const auto hraw = encode_header(h);
  if (!vhd_pwrite_full(cfd.fd, hraw.data(), hraw.size(), child.footer.data_offset) || ::fsync(cfd.fd) != 0) {
    return vhd_errno_error(child.path, "writing the header", errno);
  }
  return st;
}

}  // namespace xenpath::img