#include "blkback/vhd_tool.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace xenpath::img {

namespace fs = std::filesystem;
using namespace vhd;

namespace {

VhdError fail(const std::string& path, const std::string& what, int code = EINVAL) {
  return VhdError{code, path + ": " + what};
}

// An fd closed on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

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

VhdStatus sync_fd(int fd, const std::string& path) {
  if (::fdatasync(fd) != 0) return vhd_errno_error(path, "fdatasync", errno);
  return {};
}

// Writes the BAT sectors holding `blocks` from the in-memory BAT.
VhdStatus write_bat_entries(const VhdLevel& lv, std::vector<uint32_t> blocks) {
  constexpr uint32_t kPerSector = kSectorSize / 4;
  std::vector<uint32_t> sectors;
  for (uint32_t b : blocks) sectors.push_back(b / kPerSector);
  std::sort(sectors.begin(), sectors.end());
  sectors.erase(std::unique(sectors.begin(), sectors.end()), sectors.end());
  std::array<uint8_t, kSectorSize> raw{};
  for (uint32_t s : sectors) {
    const size_t first = size_t{s} * kPerSector;
    const size_t n = std::min<size_t>(kPerSector, lv.bat.size() - first);
    encode_bat(std::span<const uint32_t>(lv.bat.data() + first, n), raw);
    // The last sector of the BAT may extend past max_table_entries only in
    // its padding, which creators fill with 0xFF as encode_bat does.
    const uint64_t off = lv.header.table_offset + uint64_t{s} * kSectorSize;
    if (!vhd_pwrite_full(lv.fd, raw.data(), raw.size(), off)) return vhd_errno_error(lv.path, "writing the BAT", errno);
  }
  return {};
}

VhdStatus write_footer_at(const VhdLevel& lv, uint64_t off) {
  const auto raw = encode_footer(lv.footer);
  if (!vhd_pwrite_full(lv.fd, raw.data(), raw.size(), off))
    return vhd_errno_error(lv.path, "writing the footer", errno);
  return {};
}

// Appends blocks to a sparse VHD open read-write, in batches that keep the
// file consistent at every point of a crash: (1) when the batch needs room
// past the footer, the footer is first written at the batch's new end
// (fdatasync), so the file always ends with a valid footer; (2) the batch's
// blocks (bitmap + data, laid out as BlockLayout::append_position puts
// them, data page-aligned) go out in one pwrite; fdatasync; (3) their BAT
// entries; fdatasync. A crash before (3) leaves blocks no BAT entry names,
// space the next append reuses (it starts at end_of_data).
class BlockAppender {
 public:
  static constexpr uint32_t kBatchBlocks = 16;

  explicit BlockAppender(VhdLevel& lv) : lv_(lv), stride_(lv.layout.block_bytes() + 4096) {
    buf_.resize(kBatchBlocks * stride_);
  }

  // The [bitmap][data] bytes of block `index` to fill, in the current batch.
  VhdResult<uint8_t*> slot(uint32_t index) {
    if (pending_.size() == kBatchBlocks) {
      if (VhdStatus s = flush(); !vhd_ok(s)) return s;
    }
    if (pending_.empty()) {
      start_ = lv_.layout.append_position(lv_.end_of_data);
      cursor_ = start_;
      prev_end_ = start_;
      const uint64_t bound = start_ + buf_.size();
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
    uint8_t* p = buf_.data() + (pos - start_);
    if (pos > prev_end_) std::memset(buf_.data() + (prev_end_ - start_), 0, pos - prev_end_);  // the gap
    prev_end_ = cursor_;
    return p;
  }
  // Gives back the last slot (its content turned out all zero).
  void drop_last() {
    pending_.pop_back();
    cursor_ = pending_.empty() ? start_ : pending_.back().second + lv_.layout.block_bytes();
    prev_end_ = cursor_;
  }
  VhdStatus flush() {
    if (pending_.empty()) return {};
    if (!vhd_pwrite_full(lv_.fd, buf_.data(), cursor_ - start_, start_)) {
      return vhd_errno_error(lv_.path, "writing blocks", errno);
    }
    if (VhdStatus s = sync_fd(lv_.fd, lv_.path); !vhd_ok(s)) return s;
    std::vector<uint32_t> blocks;
    for (const auto& [index, pos] : pending_) {
      lv_.bat[index] = static_cast<uint32_t>(pos / kSectorSize);
      blocks.push_back(index);
    }
    if (VhdStatus s = write_bat_entries(lv_, blocks); !vhd_ok(s)) return s;
    if (VhdStatus s = sync_fd(lv_.fd, lv_.path); !vhd_ok(s)) return s;
    lv_.end_of_data = std::max(lv_.end_of_data, cursor_);
    lv_.allocated_blocks += static_cast<uint32_t>(pending_.size());
    written_ += cursor_ - start_;
    pending_.clear();
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
  [[nodiscard]] uint64_t bytes_written() const noexcept { return written_; }

 private:
  VhdLevel& lv_;
  uint64_t stride_;
  std::vector<uint8_t> buf_;
  uint64_t start_ = 0;
  uint64_t cursor_ = 0;
  uint64_t prev_end_ = 0;
  uint64_t written_ = 0;
  std::vector<std::pair<uint32_t, uint64_t>> pending_;
};

// Calls fn(first_sector, count) for each run of set bits in the first `sectors` bits.
template <typename Fn>
VhdStatus for_each_set_run(std::span<const uint8_t> bm, uint32_t sectors, Fn&& fn) {
  uint32_t s = 0;
  while (s < sectors) {
    const uint32_t run = bitmap_run(bm, s, sectors - s);
    if (run == 0) break;
    if (bitmap_test(bm, s)) {
      if (VhdStatus st = fn(s, run); !vhd_ok(st)) return st;
    }
    s += run;
  }
  return {};
}

std::string creator_string(const Footer& f) {
  std::string app;
  for (char c : f.creator_app) app += (c >= 0x20 && c < 0x7F) ? c : ' ';
  while (!app.empty() && app.back() == ' ') app.pop_back();
  return fmt::format("{} {}.{}", app, f.creator_version >> 16, f.creator_version & 0xFFFF);
}

}  // namespace

std::optional<uint64_t> parse_size(const std::string& s) {
  size_t i = 0;
  uint64_t v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    const uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return std::nullopt;
  std::string suffix = s.substr(i);
  if (suffix == "B") suffix.clear();
  unsigned shift = 0;
  if (!suffix.empty()) {
    const std::string rest = suffix.substr(1);
    if (!rest.empty() && rest != "iB" && rest != "B") return std::nullopt;
    switch (suffix[0]) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        return std::nullopt;
    }
  }
  if (shift != 0 && v > (UINT64_MAX >> shift)) return std::nullopt;
  return v << shift;
}

std::string human_size(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(kUnits)) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, kUnits[u]);
}

bool looks_like_vhd(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) return false;
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0 || st.st_size < static_cast<off_t>(kFooterSize)) return false;
  std::array<uint8_t, kFooterSize> raw{};
  for (uint64_t off : {static_cast<uint64_t>(st.st_size) - kFooterSize, uint64_t{0}}) {
    if (vhd_pread_full(fd.fd, raw.data(), raw.size(), off) && !validate_footer(decode_footer(raw), raw)) return true;
  }
  return false;
}

VhdStatus create(const std::string& path, const CreateOptions& opts) {
  if (opts.format == "raw") {
    if (opts.size == 0) return fail(path, "size: must not be 0");
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.fd < 0) return vhd_errno_error(path, "create", errno);
    if (::ftruncate(fd.fd, static_cast<off_t>(opts.size)) != 0 || ::fsync(fd.fd) != 0) {
      const int e = errno;
      ::unlink(path.c_str());
      return vhd_errno_error(path, "ftruncate", e);
    }
    return {};
  }
  if (opts.format != "vhd") return fail(path, "format: \"" + opts.format + "\" (raw or vhd)");
  VhdCreateOptions o;
  o.type = opts.type;
  o.size = opts.size;
  o.block_size = opts.block_size;
  return vhd_create(path, o);
}

VhdStatus snapshot(const std::string& parent, const std::string& child) {
  VhdCreateOptions o;
  o.type = DiskType::kDifferencing;
  o.parent = parent;
  return vhd_create(child, o);
}

VhdResult<nlohmann::json> info(const std::string& path) {
  using nlohmann::json;
  if (!looks_like_vhd(path)) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return vhd_errno_error(path, "stat", errno);
    return json{{"path", path},
                {"format", "raw"},
                {"virtual_size", static_cast<uint64_t>(st.st_size)},
                {"allocated_bytes", static_cast<uint64_t>(st.st_blocks) * 512}};
  }
  VhdOpenOptions o;
  auto chain = vhd_open_chain(path, o);
  if (!chain) return chain.error();
  json levels = json::array();
  uint64_t allocated = 0;
  for (const VhdLevel& lv : chain->levels) {
    json l{{"path", lv.path},
           {"type", disk_type_name(lv.footer.disk_type)},
           {"uuid", uuid_string(lv.footer.uuid)},
           {"virtual_size", lv.virtual_size()},
           {"file_size", lv.file_size},
           {"creator", creator_string(lv.footer)},
           {"timestamp", unix_time(lv.footer.timestamp)}};
    if (lv.sparse()) {
      const uint64_t bytes = uint64_t{lv.allocated_blocks} * lv.layout.block_size;
      l["block_size"] = lv.layout.block_size;
      l["blocks"] = lv.layout.entries;
      l["allocated_blocks"] = lv.allocated_blocks;
      l["allocated_bytes"] = bytes;
      allocated += bytes;
    } else {
      l["allocated_bytes"] = lv.virtual_size();
      allocated += lv.virtual_size();
    }
    if (lv.differencing()) {
      l["parent_uuid"] = uuid_string(lv.header.parent_uuid);
      l["parent_name"] = decode_parent_name(lv.header.parent_name).text;
      l["parent_timestamp"] = unix_time(lv.header.parent_timestamp);
    }
    levels.push_back(std::move(l));
  }
  return json{{"path", path},
              {"format", "vhd"},
              {"type", disk_type_name(chain->leaf().footer.disk_type)},
              {"virtual_size", chain->virtual_size()},
              {"depth", chain->levels.size()},
              {"allocated_bytes", allocated},
              {"chain", std::move(levels)},
              {"warnings", chain->warnings}};
}

std::string info_text(const nlohmann::json& j) {
  std::string out = fmt::format("image: {}\nformat: {}", j.value("path", ""), j.value("format", ""));
  if (j.contains("type")) out += fmt::format(" ({})", j["type"].get<std::string>());
  const uint64_t vs = j.value("virtual_size", uint64_t{0});
  out += fmt::format("\nvirtual size: {} ({} bytes)\n", human_size(vs), vs);
  out += fmt::format("allocated: {}\n", human_size(j.value("allocated_bytes", uint64_t{0})));
  if (!j.contains("chain")) return out;
  out += fmt::format("chain ({} level{}, leaf first):\n", j["chain"].size(), j["chain"].size() == 1 ? "" : "s");
  size_t i = 0;
  for (const auto& l : j["chain"]) {
    out += fmt::format("  [{}] {}\n      {} uuid {} creator {}\n", i++, l.value("path", ""), l.value("type", ""),
                       l.value("uuid", ""), l.value("creator", ""));
    if (l.contains("block_size")) {
      out += fmt::format("      blocks {} of {} allocated ({}), block size {}\n", l.value("allocated_blocks", 0u),
                         l.value("blocks", 0u), human_size(l.value("allocated_bytes", uint64_t{0})),
                         human_size(l.value("block_size", 0u)));
    }
    if (l.contains("parent_uuid")) {
      out += fmt::format("      parent {} ({})\n", l.value("parent_name", ""), l.value("parent_uuid", ""));
    }
  }
  for (const auto& w : j.value("warnings", std::vector<std::string>{})) out += "warning: " + w + "\n";
  return out;
}

CheckReport check(const std::string& path, bool repair) {
  CheckReport r;
  if (::access(path.c_str(), R_OK) != 0) {
    r.errors.push_back(vhd_errno_error(path, "open", errno).message);
    r.status = 2;
    return r;
  }
  if (!looks_like_vhd(path)) {
    r.warnings.push_back(path + ": no VHD footer (at the end or at offset 0): a raw image, nothing to check");
    return r;
  }
  VhdOpenOptions strict;
  auto good = vhd_open_chain(path, strict);
  if (good) {
    r.warnings = good->warnings;
    VhdLevel& leaf = good->leaf();
    if (leaf.footer_copy_differs && repair) {
      // The footer at the end is the one every reader uses; the copy
      // follows it (blktap writes them in that order).
      Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
      const auto raw = encode_footer(leaf.footer);
      if (fd.fd < 0 || !vhd_pwrite_full(fd.fd, raw.data(), raw.size(), 0) || ::fsync(fd.fd) != 0) {
        r.errors.push_back(vhd_errno_error(path, "rewriting the footer copy", errno).message);
        r.status = 2;
        return r;
      }
      std::erase_if(r.warnings, [](const std::string& w) { return w.find("footer copy") != std::string::npos; });
      r.repaired.push_back(path + ": footer copy at offset 0 rewritten from the footer at the end");
    }
    return r;
  }
  // What a lenient open of the file itself finds: repairable damage.
  VhdOpenOptions lenient;
  lenient.accept_footer_copy = true;
  lenient.drop_dangling_blocks = true;
  lenient.read_only = !repair;
  std::vector<std::string> notes;
  auto lv = vhd_open_file(path, lenient, &notes);
  if (!lv) {
    r.errors.push_back(lv.error().message);
    r.status = lv.error().code == EINVAL ? 1 : 2;
    return r;
  }
  const bool leaf_damaged = lv->footer_from_copy || !lv->dropped_blocks.empty();
  if (!leaf_damaged) {
    // The file is sound; the chain above it is not (a parent).
    r.errors.push_back(good.error().message);
    r.status = 1;
    return r;
  }
  std::vector<std::string> found;
  if (lv->footer_from_copy)
    found.push_back(path + ": no valid footer at the end of the file; the copy at offset 0 is intact");
  for (uint32_t b : lv->dropped_blocks) {
    found.push_back(fmt::format("{}: BAT entry {}: block lies past the end of the file", path, b));
  }
  if (!repair) {
    for (std::string& f : found) r.errors.push_back(f + " (repairable: check --repair)");
    r.status = 1;
    return r;
  }
  // Repair, in an order where a crash leaves it no worse: BAT entries
  // cleared first (the blocks are not there), then the footer written
  // after the last whole block, then the file cut after that footer.
  VhdLevel& l = *lv;
  if (!l.dropped_blocks.empty()) {
    if (VhdStatus s = write_bat_entries(l, l.dropped_blocks); !vhd_ok(s)) {
      r.errors.push_back(s.message);
      r.status = 2;
      return r;
    }
    if (VhdStatus s = sync_fd(l.fd, path); !vhd_ok(s)) {
      r.errors.push_back(s.message);
      r.status = 2;
      return r;
    }
  }
  if (l.footer_from_copy) {
    VhdStatus s = write_footer_at(l, l.end_of_data);
    if (vhd_ok(s)) s = sync_fd(l.fd, path);
    if (vhd_ok(s) && ::ftruncate(l.fd, static_cast<off_t>(l.end_of_data + kFooterSize)) != 0) {
      s = vhd_errno_error(path, "ftruncate", errno);
    }
    if (vhd_ok(s) && ::fsync(l.fd) != 0) s = vhd_errno_error(path, "fsync", errno);
    if (!vhd_ok(s)) {
      r.errors.push_back(s.message);
      r.status = 2;
      return r;
    }
  }
  for (std::string& f : found) r.repaired.push_back(std::move(f));
  auto again = vhd_open_chain(path, strict);
  if (!again) {
    r.errors.push_back(again.error().message);
    r.status = 1;
    return r;
  }
  r.warnings = again->warnings;
  return r;
}

VhdResult<std::vector<LevelMap>> map(const std::string& path) {
  VhdOpenOptions o;
  auto chain = vhd_open_chain(path, o);
  if (!chain) return chain.error();
  std::vector<LevelMap> out;
  for (const VhdLevel& lv : chain->levels) {
    LevelMap m{lv.path, disk_type_name(lv.footer.disk_type), {}};
    const uint64_t vs = lv.virtual_size();
    if (!lv.sparse()) {
      m.ranges.emplace_back(0, vs);
      out.push_back(std::move(m));
      continue;
    }
    std::vector<uint8_t> bm(lv.layout.bitmap_bytes);
    for (uint32_t b = 0; b < lv.bat.size(); ++b) {
      if (lv.bat[b] == kBatUnused) continue;
      if (!vhd_pread_full(lv.fd, bm.data(), bm.size(), BlockLayout::bitmap_offset(lv.bat[b]))) {
        return vhd_errno_error(lv.path, fmt::format("reading the bitmap of block {}", b), errno);
      }
      const uint64_t base = uint64_t{b} * lv.layout.block_size;
      VhdStatus s = for_each_set_run(bm, lv.layout.sectors_per_block, [&](uint32_t first, uint32_t n) -> VhdStatus {
        const uint64_t start = base + uint64_t{first} * kSectorSize;
        const uint64_t end = std::min(start + uint64_t{n} * kSectorSize, vs);
        if (start >= end) return {};
        if (!m.ranges.empty() && m.ranges.back().first + m.ranges.back().second == start) {
          m.ranges.back().second += end - start;
        } else {
          m.ranges.emplace_back(start, end - start);
        }
        return {};
      });
      if (!vhd_ok(s)) return s;
    }
    out.push_back(std::move(m));
  }
  return out;
}

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

VhdResult<bool> ChainReader::read(uint64_t off, uint32_t len, uint8_t* buf) {
  const uint32_t nsect = len / kSectorSize;
  filled_.assign(nsect, 0);
  uint32_t remaining = nsect;
  bool any = false;
  auto fill = [&](const VhdLevel& lv, uint64_t file_off, uint32_t idx, uint32_t n) -> VhdStatus {
    if (!vhd_pread_full(lv.fd, buf + uint64_t{idx} * kSectorSize, uint64_t{n} * kSectorSize, file_off)) {
      return vhd_errno_error(lv.path, fmt::format("reading 0x{:x}", file_off), errno);
    }
    std::fill_n(filled_.begin() + idx, n, 1);
    remaining -= n;
    any = true;
    return {};
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
        if (VhdStatus s = fill(lv, off + uint64_t{i} * kSectorSize, i, n); !vhd_ok(s)) return s;
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
        if (VhdStatus s = fill(lv, lv.layout.sector_offset(lv.bat[b], sib + k), i + k, n); !vhd_ok(s)) return s;
        k += n;
      }
      i += in_block;
    }
  }
  for (uint32_t i = 0; i < nsect && remaining > 0; ++i) {
    if (!filled_[i]) std::memset(buf + uint64_t{i} * kSectorSize, 0, kSectorSize);
  }
  return any;
}

namespace {

bool interrupted(const CopyOptions& o) { return o.interrupt != nullptr && o.interrupt->load(); }

VhdResult<CopyStats> vhd_to_raw(const std::string& src, const std::string& dst, const CopyOptions& opts) {
  VhdOpenOptions o;
  auto chain = vhd_open_chain(src, o);
  if (!chain) return chain.error();
  const uint64_t size = chain->virtual_size();
  Fd out(::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (out.fd < 0) return vhd_errno_error(dst, "create", errno);
  if (::ftruncate(out.fd, static_cast<off_t>(size)) != 0) return vhd_errno_error(dst, "ftruncate", errno);
  constexpr uint32_t kChunk = 8u << 20;
  std::vector<uint8_t> buf(kChunk);
  ChainReader reader(*chain);
  CopyStats st;
  st.total_blocks = (size + kChunk - 1) / kChunk;
  for (uint64_t off = 0; off < size; off += kChunk) {
    if (interrupted(opts)) {
      st.interrupted = true;
      break;
    }
    const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(kChunk, size - off));
    if (reader.any_allocated(off, len)) {
      auto any = reader.read(off, len, buf.data());
      if (!any) return any.error();
      st.bytes_read += len;
      if (*any && !all_zero(buf.data(), len)) {
        if (!vhd_pwrite_full(out.fd, buf.data(), len, off)) return vhd_errno_error(dst, "write", errno);
        st.bytes_written += len;
        ++st.blocks;
      }
    }
    if (opts.progress) opts.progress(off + len, size);
  }
  if (::fsync(out.fd) != 0) return vhd_errno_error(dst, "fsync", errno);
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
  BlockAppender app(*lv);
  const BlockLayout& l = lv->layout;
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
    if (data < 0 || static_cast<uint64_t>(data) >= start + n) {
      if (opts.progress) opts.progress(start + n, src_size);
      continue;
    }
    auto slot = app.slot(b);
    if (!slot) return slot.error();
    uint8_t* bm = *slot;
    uint8_t* d = bm + l.bitmap_bytes;
    if (!vhd_pread_full(in.fd, d, n, start)) return vhd_errno_error(src, "read", errno);
    cs.bytes_read += n;
    if (n < l.block_size) std::memset(d + n, 0, l.block_size - n);
    if (all_zero(d, n)) {
      app.drop_last();
    } else {
      std::memset(bm, 0, l.bitmap_bytes);
      bitmap_set(
          std::span<uint8_t>(bm, l.bitmap_bytes), 0,
          static_cast<uint32_t>((std::min<uint64_t>(l.block_size, size - start) + kSectorSize - 1) / kSectorSize));
      ++cs.blocks;
    }
    if (opts.progress) opts.progress(start + n, src_size);
  }
  if (VhdStatus s = app.finish(); !vhd_ok(s)) return s;
  cs.bytes_written = app.bytes_written();
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
  std::vector<uint8_t> tmp(cl.block_bytes());
  std::vector<uint8_t> pbm(parent->sparse() ? parent->layout.bitmap_bytes : 0);
  BlockAppender app(*parent);
  const uint64_t total_bytes = uint64_t{blocks.size()} * cl.block_size;
  for (uint32_t b : blocks) {
    if (interrupted(opts)) {
      st.interrupted = true;
      break;
    }
    const uint64_t coff = BlockLayout::bitmap_offset(child.bat[b]);
    const bool new_block = parent->sparse() && (b >= parent->bat.size() || parent->bat[b] == kBatUnused);
    if (parent->sparse() && b >= parent->bat.size()) return fail(parent_path, fmt::format("no BAT entry {}", b));
    if (new_block) {
      // The child's bitmap and data, as they are: sectors the child does not
      // hold keep falling through to the parent's own parent.
      auto slot = app.slot(b);
      if (!slot) return slot.error();
      if (!vhd_pread_full(child.fd, *slot, cl.block_bytes(), coff)) return vhd_errno_error(child.path, "read", errno);
      st.bytes_read += cl.block_bytes();
    } else {
      if (!vhd_pread_full(child.fd, tmp.data(), tmp.size(), coff)) return vhd_errno_error(child.path, "read", errno);
      st.bytes_read += tmp.size();
      const std::span<const uint8_t> cbm(tmp.data(), cl.bitmap_bytes);
      const uint8_t* cdata = tmp.data() + cl.bitmap_bytes;
      const uint64_t vbase = uint64_t{b} * cl.block_size;
      VhdStatus s = for_each_set_run(cbm, cl.sectors_per_block, [&](uint32_t first, uint32_t n) -> VhdStatus {
        const uint64_t v = vbase + uint64_t{first} * kSectorSize;
        if (v >= vs) return {};
        const uint64_t bytes = std::min<uint64_t>(uint64_t{n} * kSectorSize, vs - v);
        const uint64_t poff = parent->sparse() ? parent->layout.sector_offset(parent->bat[b], first) : v;
        if (!vhd_pwrite_full(parent->fd, cdata + uint64_t{first} * kSectorSize, bytes, poff)) {
          return vhd_errno_error(parent_path, "write", errno);
        }
        st.bytes_written += bytes;
        return {};
      });
      if (!vhd_ok(s)) return s;
      if (parent->sparse()) {
        const uint64_t poff = BlockLayout::bitmap_offset(parent->bat[b]);
        if (!vhd_pread_full(parent->fd, pbm.data(), pbm.size(), poff))
          return vhd_errno_error(parent_path, "read", errno);
        for (size_t i = 0; i < pbm.size() && i < cl.bitmap_bytes; ++i) pbm[i] |= cbm[i];
        if (!vhd_pwrite_full(parent->fd, pbm.data(), pbm.size(), poff)) {
          return vhd_errno_error(parent_path, "writing a bitmap", errno);
        }
      }
    }
    ++st.blocks;
    if (opts.progress) opts.progress(st.blocks * cl.block_size, total_bytes);
  }
  if (VhdStatus s = app.finish(); !vhd_ok(s)) return s;
  st.bytes_written += app.bytes_written();
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
