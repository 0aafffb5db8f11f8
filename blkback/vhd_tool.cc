// xenpath-img's inspection and small operations: sizes, format probing,
// create, snapshot, info, check [--repair], map; and the helpers both halves
// share (vhd_tool_internal.h). The copy engine (ChainReader, convert,
// coalesce) is vhd_tool_copy.cc. Interface and threading: vhd_tool.h.
#include "blkback/vhd_tool.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "blkback/vhd_tool_internal.h"

namespace xenpath::img {

namespace internal {

using namespace vhd;

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

}  // namespace internal

namespace fs = std::filesystem;
using namespace vhd;
using namespace internal;

namespace {

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

}  // namespace xenpath::img
