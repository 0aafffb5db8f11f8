#include "blkback/vhd_file.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>

namespace xenpath {

namespace fs = std::filesystem;
using namespace vhd;

namespace {

// The in-memory BAT is bounded (a hostile header must not make us allocate
// gigabytes): 16 Mi entries cover 2040 GiB with blocks of 128 KiB and more.
constexpr uint64_t kMaxBatBytes = 64ull << 20;

VhdError invalid(const std::string& path, const std::string& what) { return VhdError{EINVAL, path + ": " + what}; }

std::string dir_of(const std::string& path) {
  const fs::path p(path);
  return p.has_parent_path() ? p.parent_path().string() : std::string(".");
}

std::string join(const std::string& dir, const std::string& rel) {
  if (!rel.empty() && rel.front() == '/') return rel;
  return (fs::path(dir) / rel).string();
}

// The path of `target` relative to directory `from_dir` (both absolute, normalized).
std::string relative_to(const fs::path& from_dir, const fs::path& target) {
  auto f = from_dir.begin();
  auto t = target.begin();
  while (f != from_dir.end() && t != target.end() && *f == *t) {
    ++f;
    ++t;
  }
  fs::path out;
  for (; f != from_dir.end(); ++f)
    if (!f->empty()) out /= "..";
  for (; t != target.end(); ++t) out /= *t;
  std::string s = out.string();
  return s.compare(0, 3, "../") == 0 ? s : "./" + s;
}

struct Region {
  uint64_t start;
  uint64_t end;
  int64_t block;  // BAT index, or -1 for metadata
  const char* name;
};

std::string region_name(const Region& r) {
  return r.block >= 0 ? fmt::format("BAT entry {} (block at 0x{:x})", r.block, r.start)
                      : fmt::format("{} at 0x{:x}", r.name, r.start);
}

}  // namespace

VhdLevel::VhdLevel(VhdLevel&& o) noexcept { *this = std::move(o); }

VhdLevel& VhdLevel::operator=(VhdLevel&& o) noexcept {
  if (this == &o) return *this;
  if (fd >= 0) ::close(fd);
  path = std::move(o.path);
  fd = std::exchange(o.fd, -1);
  read_only = o.read_only;
  direct = o.direct;
  dev = o.dev;
  ino = o.ino;
  mtime = o.mtime;
  file_size = o.file_size;
  footer = o.footer;
  footer_from_copy = o.footer_from_copy;
  footer_offset = o.footer_offset;
  header = o.header;
  layout = o.layout;
  bat = std::move(o.bat);
  end_of_data = o.end_of_data;
  allocated_blocks = o.allocated_blocks;
  dropped_blocks = std::move(o.dropped_blocks);
  footer_copy_differs = o.footer_copy_differs;
  return *this;
}

VhdLevel::~VhdLevel() {
  if (fd >= 0) ::close(fd);
}

namespace {

// pread/pwrite until `len` bytes moved: EINTR retried, short counts resumed,
// a zero-byte transfer (end of file) is EIO.
template <typename Ptr, typename Call>
bool transfer_full(Ptr p, size_t len, uint64_t off, Call call) {
  while (len > 0) {
    const ssize_t n = call(p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = EIO;
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
    off += static_cast<uint64_t>(n);
  }
  return true;
}

}  // namespace

bool vhd_pread_full(int fd, void* buf, size_t len, uint64_t off) {
  return transfer_full(static_cast<uint8_t*>(buf), len, off,
                       [fd](uint8_t* p, size_t n, off_t o) { return ::pread(fd, p, n, o); });
}

bool vhd_pwrite_full(int fd, const void* buf, size_t len, uint64_t off) {
  return transfer_full(static_cast<const uint8_t*>(buf), len, off,
                       [fd](const uint8_t* p, size_t n, off_t o) { return ::pwrite(fd, p, n, o); });
}

VhdError vhd_errno_error(const std::string& path, const std::string& what, int err) {
  return VhdError{err, fmt::format("{}: {}: {}", path, what, std::strerror(err))};
}

Uuid vhd_random_uuid() {
  Uuid u{};
  size_t got = 0;
  while (got < u.size()) {
    const ssize_t n = ::getrandom(u.data() + got, u.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  u[6] = static_cast<uint8_t>((u[6] & 0x0F) | 0x40);  // version 4
  u[8] = static_cast<uint8_t>((u[8] & 0x3F) | 0x80);  // RFC 4122 variant
  return u;
}

namespace {

// Footer, header, BAT and the layout checks of one opened fd.
VhdStatus load_metadata(VhdLevel& lv, const VhdOpenOptions& opts, std::vector<std::string>* warnings) {
  const std::string& path = lv.path;
  auto warn = [&](std::string w) {
    if (warnings != nullptr) warnings->push_back(path + ": " + std::move(w));
  };
  if (lv.file_size < kFooterSize) {
    return invalid(path, fmt::format("file size {}: too small for a VHD footer", lv.file_size));
  }
  lv.footer_offset = lv.file_size - kFooterSize;
  std::array<uint8_t, kFooterSize> raw{};
  if (!vhd_pread_full(lv.fd, raw.data(), raw.size(), lv.footer_offset)) {
    return vhd_errno_error(path, "reading the footer", errno);
  }
  lv.footer = decode_footer(raw);
  if (auto why = validate_footer(lv.footer, raw)) {
    // After a crash between a block's data and the moved footer the end has
    // no footer; a sparse image keeps a copy at offset 0.
    std::array<uint8_t, kFooterSize> copy{};
    const bool have_copy = vhd_pread_full(lv.fd, copy.data(), copy.size(), 0);
    const Footer cf = decode_footer(copy);
    if (have_copy && !validate_footer(cf, copy) && cf.sparse()) {
      if (!opts.accept_footer_copy) {
        return invalid(path, fmt::format("{} (at offset 0x{:x}, the end of the file); the footer copy at offset 0 "
                                         "is intact: `xenpath-img check --repair` restores the footer",
                                         *why, lv.footer_offset));
      }
      warn(fmt::format("{} (at offset 0x{:x}); using the footer copy at offset 0", *why, lv.footer_offset));
      lv.footer = cf;
      lv.footer_from_copy = true;
    } else {
      return invalid(path, fmt::format("{} (at offset 0x{:x}, the end of the file)", *why, lv.footer_offset));
    }
  }
  const Footer& f = lv.footer;
  if (f.fixed()) {
    if (f.current_size > lv.footer_offset) {
      return invalid(path, fmt::format("footer current size: {} bytes of data, but the file holds only {} before its "
                                       "footer (truncated?)",
                                       f.current_size, lv.footer_offset));
    }
    lv.end_of_data = f.current_size;
    return {};
  }

  // Sparse: the footer copy at 0 should match (both blktap and QEMU write it).
  if (!lv.footer_from_copy) {
    std::array<uint8_t, kFooterSize> copy{};
    if (!vhd_pread_full(lv.fd, copy.data(), copy.size(), 0))
      return vhd_errno_error(path, "reading the footer copy", errno);
    lv.footer_copy_differs = copy != raw;
    if (copy != raw) warn("footer copy at offset 0 differs from the footer at the end (the end one is used)");
  }
  if (f.data_offset + kHeaderSize > lv.footer_offset) {
    return invalid(path, fmt::format("footer data offset: header at 0x{:x} runs past the footer at 0x{:x}",
                                     f.data_offset, lv.footer_offset));
  }
  std::array<uint8_t, kHeaderSize> hraw{};
  if (!vhd_pread_full(lv.fd, hraw.data(), hraw.size(), f.data_offset)) {
    return vhd_errno_error(path, "reading the dynamic header", errno);
  }
  lv.header = decode_header(hraw);
  if (auto why = validate_header(lv.header, f, hraw)) {
    return invalid(path, fmt::format("{} (header at 0x{:x})", *why, f.data_offset));
  }
  const DynamicHeader& h = lv.header;
  lv.layout = BlockLayout::from(h);
  const uint64_t bat_bytes = uint64_t{h.max_table_entries} * 4;
  if (bat_bytes > kMaxBatBytes) {
    return invalid(path, fmt::format("header max table entries: {} (a BAT of {} bytes) above the {} bytes this "
                                     "implementation loads",
                                     h.max_table_entries, bat_bytes, kMaxBatBytes));
  }
  if (h.table_offset + bat_bytes > lv.footer_offset) {
    return invalid(path, fmt::format("header table offset: the BAT ({} entries at 0x{:x}) runs past the footer at "
                                     "0x{:x}",
                                     h.max_table_entries, h.table_offset, lv.footer_offset));
  }
  std::vector<uint8_t> braw(bat_bytes);
  if (!vhd_pread_full(lv.fd, braw.data(), braw.size(), h.table_offset)) {
    return vhd_errno_error(path, "reading the BAT", errno);
  }
  lv.bat = decode_bat(braw, h.max_table_entries);

  std::vector<Region> regions;
  regions.push_back({0, kFooterSize, -1, "footer copy"});
  regions.push_back({f.data_offset, f.data_offset + kHeaderSize, -1, "dynamic header"});
  // The BAT as stored is padded to a sector; blocks start after the padding.
  const uint64_t bat_end = std::min(h.table_offset + bat_bytes_padded(h.max_table_entries), lv.footer_offset);
  regions.push_back({h.table_offset, std::max(bat_end, h.table_offset + 1), -1, "BAT"});
  if (f.differencing()) {
    for (size_t i = 0; i < kLocatorCount; ++i) {
      const ParentLocator& l = h.locators[i];
      if (l.code == kPlatNone) continue;
      if (l.data_offset + l.data_length > lv.footer_offset) {
        return invalid(path,
                       fmt::format("header parent locator {} ({}): data at 0x{:x} (+{}) runs past the footer "
                                   "at 0x{:x}",
                                   i, platform_code_name(l.code), l.data_offset, l.data_length, lv.footer_offset));
      }
      regions.push_back({l.data_offset, l.data_offset + l.data_length, -1, "parent locator"});
    }
  }
  const uint64_t block_bytes = lv.layout.block_bytes();
  for (uint32_t i = 0; i < lv.bat.size(); ++i) {
    const uint32_t e = lv.bat[i];
    if (e == kBatUnused) continue;
    const uint64_t start = BlockLayout::bitmap_offset(e);
    if (start + block_bytes > lv.footer_offset) {
      if (opts.drop_dangling_blocks) {
        warn(fmt::format("BAT entry {}: block at 0x{:x} (+{}) runs past the footer at 0x{:x}; treated as unallocated",
                         i, start, block_bytes, lv.footer_offset));
        lv.bat[i] = kBatUnused;
        lv.dropped_blocks.push_back(i);
        continue;
      }
      return invalid(path, fmt::format("BAT entry {}: block at 0x{:x} (+{} bytes) runs past the footer at 0x{:x} "
                                       "(truncated file?)",
                                       i, start, block_bytes, lv.footer_offset));
    }
    regions.push_back({start, start + block_bytes, static_cast<int64_t>(i), nullptr});
  }
  std::sort(regions.begin(), regions.end(), [](const Region& a, const Region& b) {
    return a.start != b.start ? a.start < b.start : a.block < b.block;
  });
  uint64_t end = 0;
  const Region* last = nullptr;
  lv.allocated_blocks = 0;
  for (const Region& r : regions) {
    if (last != nullptr && r.start < end) {
      const Region& blame = r.block >= 0 ? r : *last;
      const Region& other = r.block >= 0 ? *last : r;
      const std::string field = blame.block >= 0 ? fmt::format("BAT entry {}", blame.block) : blame.name;
      return invalid(path, fmt::format("{}: {} overlaps {}", field, region_name(blame), region_name(other)));
    }
    if (r.block >= 0) ++lv.allocated_blocks;
    if (r.end > end) {
      end = r.end;
      last = &r;
    }
  }
  lv.end_of_data = end;
  return {};
}

}  // namespace

VhdResult<VhdLevel> vhd_open_file(const std::string& path, const VhdOpenOptions& opts,
                                  std::vector<std::string>* warnings) {
  VhdLevel lv;
  lv.path = path;
  lv.read_only = opts.read_only;
  // Metadata is read through the page cache; O_DIRECT is switched on after.
  lv.fd = ::open(path.c_str(), (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (lv.fd < 0) return vhd_errno_error(path, "open", errno);
  struct stat st {};
  if (::fstat(lv.fd, &st) != 0) return vhd_errno_error(path, "fstat", errno);
  if (S_ISREG(st.st_mode)) {
    lv.file_size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    uint64_t bytes = 0;
    if (::ioctl(lv.fd, BLKGETSIZE64, &bytes) != 0) return vhd_errno_error(path, "BLKGETSIZE64", errno);
    lv.file_size = bytes;
  } else {
    return invalid(path, "not a regular file or block device");
  }
  lv.dev = st.st_dev;
  lv.ino = st.st_ino;
  lv.mtime = st.st_mtim.tv_sec;
  if (VhdStatus s = load_metadata(lv, opts, warnings); !vhd_ok(s)) return s;
  if (opts.direct) {
    const int fl = ::fcntl(lv.fd, F_GETFL);
    if (fl < 0 || ::fcntl(lv.fd, F_SETFL, fl | O_DIRECT) != 0) return vhd_errno_error(path, "O_DIRECT", errno);
    lv.direct = true;
  }
  return lv;
}

std::vector<std::string> vhd_parent_candidates(const VhdLevel& child, std::vector<std::string>* notes) {
  std::vector<std::string> out;
  const std::string dir = dir_of(child.path);
  auto note = [&](std::string n) {
    if (notes != nullptr) notes->push_back(std::move(n));
  };
  auto consider = [&](const std::string& p, const std::string& source) {
    const std::string full = join(dir, p);
    struct stat st {};
    if (::stat(full.c_str(), &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
      note(fmt::format("{} -> {}: not found", source, full));
      return;
    }
    std::error_code ec;
    const std::string canon = fs::canonical(full, ec).string();
    const std::string& use = ec ? full : canon;
    if (std::find(out.begin(), out.end(), use) == out.end()) out.push_back(use);
  };
  for (uint32_t code : {kPlatW2ku, kPlatW2ru, kPlatMacx}) {
    for (size_t i = 0; i < kLocatorCount; ++i) {
      const ParentLocator& l = child.header.locators[i];
      if (l.code != code) continue;
      const std::string source = fmt::format("parent locator {} ({})", i, platform_code_name(code));
      std::vector<uint8_t> data(l.data_length);
      if (!vhd_pread_full(child.fd, data.data(), data.size(), l.data_offset)) {
        note(fmt::format("{}: unreadable: {}", source, std::strerror(errno)));
        continue;
      }
      DecodedText t = decode_locator(code, data);
      if (!t.error.empty()) {
        note(t.error);
        continue;
      }
      consider(t.text, source);
    }
  }
  DecodedText name = decode_parent_name(child.header.parent_name);
  if (!name.error.empty()) {
    note(name.error);
  } else {
    std::string base = name.text;
    const size_t cut = base.find_last_of("/\\");
    if (cut != std::string::npos) base.erase(0, cut + 1);
    if (!base.empty()) consider(base, fmt::format("parent unicode name \"{}\"", name.text));
  }
  return out;
}

VhdResult<VhdChain> vhd_open_chain(const std::string& path, const VhdOpenOptions& opts) {
  VhdChain chain;
  auto leaf = vhd_open_file(path, opts, &chain.warnings);
  if (!leaf) return leaf.error();
  chain.levels.push_back(std::move(*leaf));
  VhdOpenOptions popts = opts;
  popts.read_only = true;
  while (chain.levels.back().differencing()) {
    const VhdLevel& child = chain.levels.back();
    if (chain.levels.size() >= opts.max_depth) {
      return VhdError{EMLINK, fmt::format("{}: chain deeper than {} levels (at {})", path, opts.max_depth, child.path)};
    }
    std::vector<std::string> notes;
    const std::vector<std::string> candidates = vhd_parent_candidates(child, &notes);
    if (candidates.empty()) {
      std::string tried;
      for (const std::string& n : notes) tried += "; " + n;
      return VhdError{ENOENT, fmt::format("{}: parent not found (header parent unique id {}){}", child.path,
                                          uuid_string(child.header.parent_uuid), tried)};
    }
    std::optional<VhdError> first_error;
    std::optional<VhdLevel> parent;
    for (const std::string& cand : candidates) {
      struct stat st {};
      if (::stat(cand.c_str(), &st) != 0) continue;
      for (size_t k = 0; k < chain.levels.size(); ++k) {
        if (chain.levels[k].dev == st.st_dev && chain.levels[k].ino == st.st_ino) {
          return VhdError{ELOOP, fmt::format("{}: parent {} is already level {} of the chain ({}): the chain loops",
                                             child.path, cand, k, chain.levels[k].path)};
        }
      }
      auto p = vhd_open_file(cand, popts, &chain.warnings);
      if (!p) {
        if (!first_error) first_error = p.error();
        continue;
      }
      if (p->footer.uuid != child.header.parent_uuid) {
        if (!first_error) {
          first_error =
              VhdError{EINVAL, fmt::format("{}: header parent unique id: {}, but {} has unique id {}", child.path,
                                           uuid_string(child.header.parent_uuid), cand, uuid_string(p->footer.uuid))};
        }
        continue;
      }
      parent = std::move(*p);
      break;
    }
    if (!parent) return *first_error;
    for (size_t k = 0; k < chain.levels.size(); ++k) {
      if (chain.levels[k].footer.uuid == parent->footer.uuid) {
        return VhdError{ELOOP,
                        fmt::format("{}: parent {} has the unique id {} of level {} ({}): the chain loops", child.path,
                                    parent->path, uuid_string(parent->footer.uuid), k, chain.levels[k].path)};
      }
    }
    if (vhd_time(parent->mtime) != child.header.parent_timestamp) {
      const std::string msg =
          fmt::format("{}: header parent timestamp: {} (Unix {}), but {} was modified at {} (Unix {})", child.path,
                      child.header.parent_timestamp, unix_time(child.header.parent_timestamp), parent->path,
                      vhd_time(parent->mtime), parent->mtime);
      if (opts.strict_timestamps) return VhdError{EINVAL, msg};
      chain.warnings.push_back(msg);
    }
    chain.levels.push_back(std::move(*parent));
  }
  return chain;
}

namespace {

VhdStatus write_new(int fd, const std::string& path, const VhdCreateOptions& opts) {
  const uint32_t now = vhd_time(::time(nullptr));
  uint64_t size = opts.size;
  uint32_t block_size = opts.block_size;
  DynamicHeader h;
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> locators;
  if (opts.type == DiskType::kDifferencing) {
    if (opts.parent.empty()) return invalid(path, "a differencing image needs a parent");
    VhdOpenOptions po;
    auto pchain = vhd_open_chain(opts.parent, po);
    if (!pchain) return pchain.error();
    const VhdLevel& parent = pchain->leaf();
    if (size == 0) size = parent.virtual_size();
    if (parent.sparse()) block_size = parent.layout.block_size;
    h.parent_uuid = parent.footer.uuid;
    h.parent_timestamp = vhd_time(parent.mtime);
    std::error_code ec;
    const fs::path parent_abs = fs::canonical(opts.parent, ec);
    if (ec) return vhd_errno_error(opts.parent, "realpath", ec.value());
    const fs::path child_dir = fs::weakly_canonical(fs::absolute(path).parent_path(), ec);
    if (ec) return vhd_errno_error(path, "realpath of its folder", ec.value());
    auto name = encode_parent_name(parent_abs.filename().string());
    if (!name) return invalid(path, "parent unicode name: the parent's file name does not fit in 256 UTF-16 units");
    h.parent_name = *name;
    const std::string rel = relative_to(child_dir, parent_abs);
    for (uint32_t code : {kPlatMacx, kPlatW2ku, kPlatW2ru}) {
      auto data = encode_locator(code, rel);
      if (!data || data->size() > kMaxLocatorBytes) {
        return invalid(path, fmt::format("parent locator {}: cannot encode \"{}\"", platform_code_name(code), rel));
      }
      locators.emplace_back(code, std::move(*data));
    }
  }
  if (size == 0 || size % kSectorSize != 0 || size > kMaxDiskSize) {
    return invalid(path, fmt::format("size {}: must be a non-zero multiple of 512 up to 2040 GiB", size));
  }
  Footer f = new_footer(opts.type, size, now, vhd_random_uuid());
  if (opts.type == DiskType::kFixed) {
    if (::ftruncate(fd, static_cast<off_t>(size + kFooterSize)) != 0) return vhd_errno_error(path, "ftruncate", errno);
    const auto raw = encode_footer(f);
    if (!vhd_pwrite_full(fd, raw.data(), raw.size(), size)) return vhd_errno_error(path, "writing the footer", errno);
    return {};
  }
  if (block_size < kMinBlockSize || block_size > kMaxBlockSize || (block_size & (block_size - 1)) != 0) {
    return invalid(path, fmt::format("block size {}: must be a power of two in [512, 256 MiB]", block_size));
  }
  h.block_size = block_size;
  h.max_table_entries = static_cast<uint32_t>((size + block_size - 1) / block_size);
  h.table_offset = kFooterSize + kHeaderSize;
  const uint64_t bat_padded = bat_bytes_padded(h.max_table_entries);
  if (bat_padded > kMaxBatBytes) return invalid(path, "block size: too small for this size (BAT above 64 MiB)");
  uint64_t off = h.table_offset + bat_padded;
  std::vector<uint8_t> locdata;
  for (size_t i = 0; i < locators.size(); ++i) {
    const auto& [code, data] = locators[i];
    const uint64_t padded = (data.size() + kSectorSize - 1) / kSectorSize * kSectorSize;
    // data_space in bytes, as blktap and Windows write it (the spec says sectors).
    h.locators[i] = ParentLocator{code, static_cast<uint32_t>(padded), static_cast<uint32_t>(data.size()), 0, off};
    locdata.insert(locdata.end(), data.begin(), data.end());
    locdata.resize(locdata.size() + (padded - data.size()), 0);
    off += padded;
  }
  const auto hraw = encode_header(h);
  if (!vhd_pwrite_full(fd, hraw.data(), hraw.size(), kFooterSize)) {
    return vhd_errno_error(path, "writing the header", errno);
  }
  std::vector<uint8_t> bat(bat_padded);
  encode_bat(std::vector<uint32_t>(h.max_table_entries, kBatUnused), bat);
  if (!vhd_pwrite_full(fd, bat.data(), bat.size(), h.table_offset))
    return vhd_errno_error(path, "writing the BAT", errno);
  if (!locdata.empty() && !vhd_pwrite_full(fd, locdata.data(), locdata.size(), h.table_offset + bat_padded)) {
    return vhd_errno_error(path, "writing the parent locators", errno);
  }
  const auto raw = encode_footer(f);
  if (!vhd_pwrite_full(fd, raw.data(), raw.size(), off)) return vhd_errno_error(path, "writing the footer", errno);
  if (!vhd_pwrite_full(fd, raw.data(), raw.size(), 0)) return vhd_errno_error(path, "writing the footer copy", errno);
  return {};
}

}  // namespace

VhdStatus vhd_create(const std::string& path, const VhdCreateOptions& opts) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | (opts.overwrite ? O_TRUNC : O_EXCL), 0644);
  if (fd < 0) return vhd_errno_error(path, "create", errno);
  VhdStatus s = write_new(fd, path, opts);
  if (vhd_ok(s) && ::fsync(fd) != 0) s = vhd_errno_error(path, "fsync", errno);
  ::close(fd);
  if (!vhd_ok(s)) {
    ::unlink(path.c_str());
    return s;
  }
  // The new name is durable too.
  const int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

}  // namespace xenpath
