#include "blkback/vhd_format.h"

#include <algorithm>
#include <bit>
#include <concepts>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

namespace xenpath::vhd {

namespace {

// Footer field offsets.
constexpr size_t kFCookie = 0, kFFeatures = 8, kFVersion = 12, kFDataOffset = 16, kFTimestamp = 24, kFCreatorApp = 28,
                 kFCreatorVersion = 32, kFCreatorOs = 36, kFOriginalSize = 40, kFCurrentSize = 48, kFCylinders = 56,
                 kFHeads = 58, kFSpt = 59, kFDiskType = 60, kFChecksum = 64, kFUuid = 68, kFSavedState = 84,
                 kFReserved = 85;
// Dynamic header field offsets.
constexpr size_t kHCookie = 0, kHDataOffset = 8, kHTableOffset = 16, kHVersion = 24, kHMaxEntries = 28,
                 kHBlockSize = 32, kHChecksum = 36, kHParentUuid = 40, kHParentTimestamp = 56, kHReserved1 = 60,
                 kHParentName = 64, kHLocators = 576, kHLocatorSize = 24, kHReserved2 = 768;
static_assert(kFReserved + 427 == kFooterSize);
static_assert(kHLocators + kLocatorCount * kHLocatorSize == kHReserved2);
static_assert(kHReserved2 + 256 == kHeaderSize);

std::string printable(std::span<const char> s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F && c != '"' && c != '\\') {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  return out;
}

bool is_power_of_two(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

const char* disk_type_name(uint32_t type) noexcept {
  switch (type) {
    case static_cast<uint32_t>(DiskType::kFixed):
      return "fixed";
    case static_cast<uint32_t>(DiskType::kDynamic):
      return "dynamic";
    case static_cast<uint32_t>(DiskType::kDifferencing):
      return "differencing";
    default:
      return "unknown";
  }
}

std::string platform_code_name(uint32_t code) {
  if (code == kPlatNone) return "none";
  const std::array<char, 4> c{static_cast<char>(code >> 24), static_cast<char>(code >> 16),
                              static_cast<char>(code >> 8), static_cast<char>(code)};
  return printable(c);
}

std::string uuid_string(const Uuid& u) {
  return fmt::format(
      "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", u[0],
      u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

Geometry chs_for_size(uint64_t bytes) noexcept {
  uint64_t total = bytes / kSectorSize;
  constexpr uint64_t kMaxChs = 65535ull * 16 * 255;
  total = std::min(total, kMaxChs);
  uint64_t spt = 0, heads = 0, cth = 0;
  if (total >= 65535ull * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = total / spt;
  } else {
    spt = 17;
    cth = total / spt;
    heads = std::max<uint64_t>((cth + 1023) / 1024, 4);
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = total / spt;
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = total / spt;
    }
  }
  return Geometry{static_cast<uint16_t>(cth / heads), static_cast<uint8_t>(heads), static_cast<uint8_t>(spt)};
}

uint32_t checksum(std::span<const uint8_t> bytes, size_t checksum_offset) noexcept {
  uint32_t sum = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i >= checksum_offset && i < checksum_offset + 4) continue;
    sum += bytes[i];
  }
  return ~sum;
}

namespace {

// Each structure's layout is written once, as a walk over its fields that
// both directions share (Load fills the struct from bytes, Store the bytes
// from the struct), so decode and encode cannot disagree on an offset.
struct Load {
  const uint8_t* p;
  void be(size_t off, uint64_t& v) const noexcept { v = load_be64(p + off); }
  void be(size_t off, uint32_t& v) const noexcept { v = load_be32(p + off); }
  void be(size_t off, uint16_t& v) const noexcept { v = static_cast<uint16_t>((p[off] << 8) | p[off + 1]); }
  void be(size_t off, uint8_t& v) const noexcept { v = p[off]; }
  template <typename T, size_t N>
  void bytes(size_t off, std::array<T, N>& a) const noexcept {
    static_assert(sizeof(T) == 1);
    std::memcpy(a.data(), p + off, N);
  }
};

struct Store {
  uint8_t* p;
  void be(size_t off, uint64_t v) const noexcept { store_be64(p + off, v); }
  void be(size_t off, uint32_t v) const noexcept { store_be32(p + off, v); }
  void be(size_t off, uint16_t v) const noexcept {
    p[off] = static_cast<uint8_t>(v >> 8);
    p[off + 1] = static_cast<uint8_t>(v);
  }
  void be(size_t off, uint8_t v) const noexcept { p[off] = v; }
  template <typename T, size_t N>
  void bytes(size_t off, const std::array<T, N>& a) const noexcept {
    static_assert(sizeof(T) == 1);
    std::memcpy(p + off, a.data(), N);
  }
};

// F is Footer (Load) or const Footer (Store).
template <typename Io, typename F>
requires std::same_as<std::remove_const_t<F>, Footer>
void fields(const Io& io, F& f) noexcept {
  io.bytes(kFCookie, f.cookie);
  io.be(kFFeatures, f.features);  // bit 1 reserved, always set
  io.be(kFVersion, f.format_version);
  io.be(kFDataOffset, f.data_offset);
  io.be(kFTimestamp, f.timestamp);  // seconds since 2000-01-01 UTC
  io.bytes(kFCreatorApp, f.creator_app);
  io.be(kFCreatorVersion, f.creator_version);
  io.be(kFCreatorOs, f.creator_os);
  io.be(kFOriginalSize, f.original_size);  // libvhdi takes the size from here
  io.be(kFCurrentSize, f.current_size);
  io.be(kFCylinders, f.geometry.cylinders);  // QEMU takes the size from CHS unless the creator is trusted
  io.be(kFHeads, f.geometry.heads);
  io.be(kFSpt, f.geometry.sectors_per_track);
  io.be(kFDiskType, f.disk_type);
  io.be(kFChecksum, f.checksum);  // ones' complement of the byte sum, this field as zeros
  io.bytes(kFUuid, f.uuid);
  io.be(kFSavedState, f.saved_state);
  io.bytes(kFReserved, f.reserved);
}

template <typename Io, typename H>
requires std::same_as<std::remove_const_t<H>, DynamicHeader>
void fields(const Io& io, H& h) noexcept {
  io.bytes(kHCookie, h.cookie);
  io.be(kHDataOffset, h.data_offset);  // unused: all ones
  io.be(kHTableOffset, h.table_offset);
  io.be(kHVersion, h.header_version);
  io.be(kHMaxEntries, h.max_table_entries);  // BAT entries: blocks of the virtual size
  io.be(kHBlockSize, h.block_size);
  io.be(kHChecksum, h.checksum);
  io.bytes(kHParentUuid, h.parent_uuid);
  io.be(kHParentTimestamp, h.parent_timestamp);  // blktap: the parent file's mtime
  io.be(kHReserved1, h.reserved1);
  io.bytes(kHParentName, h.parent_name);
  for (size_t i = 0; i < kLocatorCount; ++i) {
    const size_t l = kHLocators + i * kHLocatorSize;
    auto& loc = h.locators[i];
    io.be(l, loc.code);
    io.be(l + 4, loc.data_space);  // sectors per the spec, bytes as blktap writes it
    io.be(l + 8, loc.data_length);
    io.be(l + 12, loc.reserved);
    io.be(l + 16, loc.data_offset);
  }
  io.bytes(kHReserved2, h.reserved2);
}

template <typename T, size_t N>
T decode_from(std::span<const uint8_t, N> in) noexcept {
  T v;
  fields(Load{in.data()}, v);
  return v;
}

// Zeros first: the reserved ranges a struct does not carry read as zeros.
template <size_t kChecksumAt, typename T, size_t N>
void encode_into(const T& v, std::span<uint8_t, N> out) noexcept {
  std::memset(out.data(), 0, N);
  fields(Store{out.data()}, v);
  store_be32(out.data() + kChecksumAt, checksum(out, kChecksumAt));
}

}  // namespace

Footer decode_footer(std::span<const uint8_t, kFooterSize> in) noexcept { return decode_from<Footer>(in); }
DynamicHeader decode_header(std::span<const uint8_t, kHeaderSize> in) noexcept {
  return decode_from<DynamicHeader>(in);
}

void encode_footer(const Footer& f, std::span<uint8_t, kFooterSize> out) noexcept { encode_into<kFChecksum>(f, out); }
void encode_header(const DynamicHeader& h, std::span<uint8_t, kHeaderSize> out) noexcept {
  encode_into<kHChecksum>(h, out);
}

std::array<uint8_t, kFooterSize> encode_footer(const Footer& f) noexcept {
  std::array<uint8_t, kFooterSize> out;
  encode_footer(f, out);
  return out;
}
std::array<uint8_t, kHeaderSize> encode_header(const DynamicHeader& h) noexcept {
  std::array<uint8_t, kHeaderSize> out;
  encode_header(h, out);
  return out;
}

std::optional<std::string> validate_footer(const Footer& f, std::span<const uint8_t, kFooterSize> raw) {
  if (f.cookie != kFooterCookie)
    return fmt::format("footer cookie: \"{}\", expected \"conectix\"", printable(f.cookie));
  const uint32_t sum = checksum(raw, kFChecksum);
  if (sum != f.checksum) return fmt::format("footer checksum: stored 0x{:08x}, computed 0x{:08x}", f.checksum, sum);
  if ((f.format_version >> 16) != 1) return fmt::format("footer file format version: 0x{:08x}", f.format_version);
  if (!f.fixed() && !f.sparse())
    return fmt::format("footer disk type: {} (not fixed, dynamic or differencing)", f.disk_type);
  if (f.current_size == 0) return std::string("footer current size: 0");
  if (f.current_size % kSectorSize != 0) {
    return fmt::format("footer current size: {} is not a multiple of 512", f.current_size);
  }
  if (f.current_size > kMaxDiskSize) {
    return fmt::format("footer current size: {} exceeds the format's {} bytes (2040 GiB)", f.current_size,
                       kMaxDiskSize);
  }
  if (f.sparse()) {
    if (f.data_offset == kNoDataOffset || f.data_offset % kSectorSize != 0 || f.data_offset < kFooterSize ||
        f.data_offset > (uint64_t{1} << 62)) {
      return fmt::format("footer data offset: 0x{:x} is not a sector-aligned header position", f.data_offset);
    }
  }
  return std::nullopt;
}

std::optional<std::string> validate_header(const DynamicHeader& h, const Footer& f,
                                           std::span<const uint8_t, kHeaderSize> raw) {
  if (h.cookie != kHeaderCookie)
    return fmt::format("header cookie: \"{}\", expected \"cxsparse\"", printable(h.cookie));
  const uint32_t sum = checksum(raw, kHChecksum);
  if (sum != h.checksum) return fmt::format("header checksum: stored 0x{:08x}, computed 0x{:08x}", h.checksum, sum);
  if (h.header_version != kHeaderVersion) return fmt::format("header version: 0x{:08x}", h.header_version);
  // The spec says 0xFFFFFFFF; every writer sets all 64 bits. Both mean "none".
  if (h.data_offset != kNoDataOffset && h.data_offset != 0xFFFFFFFFull) {
    return fmt::format("header data offset: 0x{:x}, expected 0xffffffffffffffff", h.data_offset);
  }
  if (!is_power_of_two(h.block_size) || h.block_size < kMinBlockSize || h.block_size > kMaxBlockSize) {
    return fmt::format("header block size: {} is not a power of two in [512, 256 MiB]", h.block_size);
  }
  const uint64_t needed = (f.current_size + h.block_size - 1) / h.block_size;
  if (h.max_table_entries < needed) {
    return fmt::format("header max table entries: {} blocks of {} bytes do not cover the disk's {} bytes",
                       h.max_table_entries, h.block_size, f.current_size);
  }
  const uint64_t most = (kMaxDiskSize + h.block_size - 1) / h.block_size;
  if (h.max_table_entries > most) {
    return fmt::format("header max table entries: {} blocks exceed the format's 2040 GiB", h.max_table_entries);
  }
  if (h.table_offset % kSectorSize != 0 || h.table_offset < kFooterSize || h.table_offset > (uint64_t{1} << 62)) {
    return fmt::format("header table offset: 0x{:x} is not a sector-aligned position after the footer copy",
                       h.table_offset);
  }
  for (size_t i = 0; i < kLocatorCount; ++i) {
    const ParentLocator& l = h.locators[i];
    switch (l.code) {
      case kPlatNone:
        continue;
      case kPlatWi2r:
      case kPlatWi2k:
      case kPlatW2ru:
      case kPlatW2ku:
      case kPlatMac:
      case kPlatMacx:
        break;
      default:
        return fmt::format("header parent locator {}: platform code 0x{:08x} is unknown", i, l.code);
    }
    if (l.data_length == 0 || l.data_length > kMaxLocatorBytes) {
      return fmt::format("header parent locator {} ({}): data length {} not in [1, {}]", i, platform_code_name(l.code),
                         l.data_length, kMaxLocatorBytes);
    }
    // data_space is sectors per the spec and bytes as blktap/Windows write it.
    if (l.data_length > std::max<uint64_t>(l.data_space, uint64_t{l.data_space} * kSectorSize)) {
      return fmt::format("header parent locator {} ({}): data length {} exceeds its data space {}", i,
                         platform_code_name(l.code), l.data_length, l.data_space);
    }
    if (l.data_offset < kFooterSize || l.data_offset > (uint64_t{1} << 62)) {
      return fmt::format("header parent locator {} ({}): data offset 0x{:x} out of range", i,
                         platform_code_name(l.code), l.data_offset);
    }
  }
  return std::nullopt;
}

BlockLayout BlockLayout::from(const DynamicHeader& h) noexcept {
  BlockLayout l;
  l.block_size = h.block_size;
  l.sectors_per_block = h.block_size / kSectorSize;
  const uint32_t bits_bytes = (l.sectors_per_block + 7) / 8;
  l.bitmap_bytes = (bits_bytes + kSectorSize - 1) / kSectorSize * kSectorSize;
  l.entries = h.max_table_entries;
  return l;
}

uint64_t BlockLayout::append_position(uint64_t end_of_data, uint32_t data_align) const noexcept {
  uint64_t pos = (end_of_data + kSectorSize - 1) / kSectorSize * kSectorSize;
  if (data_align > kSectorSize && data_align % kSectorSize == 0) {
    const uint64_t misalign = (pos + bitmap_bytes) % data_align;
    if (misalign != 0) pos += data_align - misalign;
  }
  return pos;
}

std::vector<uint32_t> decode_bat(std::span<const uint8_t> in, uint32_t entries) {
  const size_t n = std::min<size_t>(entries, in.size() / 4);
  std::vector<uint32_t> bat(n);
  for (size_t i = 0; i < n; ++i) bat[i] = bat_entry_decode(in.data() + i * 4);
  return bat;
}

void encode_bat(std::span<const uint32_t> bat, std::span<uint8_t> out) noexcept {
  std::memset(out.data(), 0xFF, out.size());
  const size_t n = std::min(bat.size(), out.size() / 4);
  for (size_t i = 0; i < n; ++i) bat_entry_encode(bat[i], out.data() + i * 4);
}

namespace {

template <bool kSet>
void bitmap_apply(std::span<uint8_t> map, uint32_t first, uint32_t count) noexcept {
  uint64_t s = first;
  const uint64_t end = std::min<uint64_t>(uint64_t{first} + count, uint64_t{map.size()} * 8);
  while (s < end) {
    if ((s & 7) == 0 && end - s >= 8) {
      map[s >> 3] = kSet ? 0xFF : 0x00;
      s += 8;
      continue;
    }
    const uint8_t bit = static_cast<uint8_t>(0x80u >> (s & 7));
    if (kSet) {
      map[s >> 3] |= bit;
    } else {
      map[s >> 3] &= static_cast<uint8_t>(~bit);
    }
    ++s;
  }
}

}  // namespace

void bitmap_set(std::span<uint8_t> map, uint32_t first, uint32_t count) noexcept {
  bitmap_apply<true>(map, first, count);
}
void bitmap_clear(std::span<uint8_t> map, uint32_t first, uint32_t count) noexcept {
  bitmap_apply<false>(map, first, count);
}

uint32_t bitmap_run(std::span<const uint8_t> map, uint32_t first, uint32_t limit) noexcept {
  const uint64_t bits = uint64_t{map.size()} * 8;
  if (first >= bits || limit == 0) return 0;
  const uint64_t end = std::min<uint64_t>(uint64_t{first} + limit, bits);
  const bool value = bitmap_test(map, first);
  const uint8_t whole = value ? 0xFF : 0x00;
  uint64_t s = first;
  while (s < end) {
    if ((s & 7) == 0 && end - s >= 8 && map[s >> 3] == whole) {
      s += 8;
      continue;
    }
    if (bitmap_test(map, static_cast<uint32_t>(s)) != value) break;
    ++s;
  }
  return static_cast<uint32_t>(s - first);
}

bool bitmap_all_set(std::span<const uint8_t> map, uint32_t sectors) noexcept {
  return bitmap_run(map, 0, sectors) == sectors && (sectors == 0 || bitmap_test(map, 0));
}

uint32_t bitmap_count(std::span<const uint8_t> map, uint32_t sectors) noexcept {
  uint32_t n = 0;
  const uint32_t bits = static_cast<uint32_t>(std::min<uint64_t>(sectors, uint64_t{map.size()} * 8));
  uint32_t s = 0;
  for (; s + 8 <= bits; s += 8) n += static_cast<uint32_t>(std::popcount(map[s >> 3]));
  for (; s < bits; ++s) n += bitmap_test(map, s) ? 1 : 0;
  return n;
}

std::optional<std::string> utf16_to_utf8(std::span<const uint8_t> in, bool big_endian) {
  if (in.size() % 2 != 0) return std::nullopt;
  std::string out;
  auto unit = [&](size_t i) -> uint32_t {
    return big_endian ? (uint32_t{in[i]} << 8) | in[i + 1] : (uint32_t{in[i + 1]} << 8) | in[i];
  };
  for (size_t i = 0; i < in.size(); i += 2) {
    uint32_t cp = unit(i);
    if (cp == 0) return std::nullopt;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (i + 2 >= in.size()) return std::nullopt;
      const uint32_t lo = unit(i + 2);
      if (lo < 0xDC00 || lo > 0xDFFF) return std::nullopt;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      i += 2;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      return std::nullopt;
    }
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

std::optional<std::vector<uint8_t>> utf8_to_utf16(std::string_view in, bool big_endian) {
  std::vector<uint8_t> out;
  auto put = [&](uint32_t u) {
    const auto hi = static_cast<uint8_t>(u >> 8), lo = static_cast<uint8_t>(u);
    out.push_back(big_endian ? hi : lo);
    out.push_back(big_endian ? lo : hi);
  };
  for (size_t i = 0; i < in.size();) {
    const auto c = static_cast<uint8_t>(in[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (c == 0) return std::nullopt;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F;
      len = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07;
      len = 4;
    } else {
      return std::nullopt;
    }
    if (i + len > in.size()) return std::nullopt;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<uint8_t>(in[i + k]);
      if ((cc & 0xC0) != 0x80) return std::nullopt;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
    if (cp >= 0x10000) {
      put(0xD800 + ((cp - 0x10000) >> 10));
      put(0xDC00 + ((cp - 0x10000) & 0x3FF));
    } else {
      put(cp);
    }
    i += len;
  }
  return out;
}

namespace {

// Drops trailing NUL units/bytes some writers include in the length.
std::span<const uint8_t> trim_nul(std::span<const uint8_t> in, size_t unit) {
  size_t n = in.size() - in.size() % unit;
  while (n >= unit) {
    bool zero = true;
    for (size_t k = 0; k < unit; ++k) zero = zero && in[n - unit + k] == 0;
    if (!zero) break;
    n -= unit;
  }
  return in.first(n);
}

std::string windows_to_posix(std::string p) {
  std::replace(p.begin(), p.end(), '\\', '/');
  if (p.size() >= 2 && p[1] == ':' && ((p[0] >= 'A' && p[0] <= 'Z') || (p[0] >= 'a' && p[0] <= 'z'))) p.erase(0, 2);
  return p;
}

}  // namespace

DecodedText decode_parent_name(std::span<const uint8_t, 512> utf16be) {
  // NUL-terminated (or the full 512 bytes).
  size_t n = 0;
  while (n + 1 < utf16be.size() && (utf16be[n] != 0 || utf16be[n + 1] != 0)) n += 2;
  if (n == 0) return {"", "header parent unicode name: empty"};
  auto s = utf16_to_utf8(std::span<const uint8_t>(utf16be.data(), n), true);
  if (!s) return {"", "header parent unicode name: not valid UTF-16BE"};
  return {*s, ""};
}

std::optional<std::array<uint8_t, 512>> encode_parent_name(std::string_view name) {
  auto u = utf8_to_utf16(name, true);
  if (!u || u->size() > 512 || u->empty()) return std::nullopt;
  std::array<uint8_t, 512> out{};
  std::memcpy(out.data(), u->data(), u->size());
  return out;
}

DecodedText decode_locator(uint32_t code, std::span<const uint8_t> data) {
  const std::string what = "parent locator " + platform_code_name(code);
  switch (code) {
    case kPlatW2ku:
    case kPlatW2ru: {
      if (data.size() % 2 != 0) return {"", what + ": odd length for UTF-16"};
      auto s = utf16_to_utf8(trim_nul(data, 2), false);
      if (!s || s->empty()) return {"", what + ": not a UTF-16LE path"};
      std::string p = windows_to_posix(std::move(*s));
      if (p.empty()) return {"", what + ": empty path"};
      return {p, ""};
    }
    case kPlatMacx: {
      const auto t = trim_nul(data, 1);
      std::string s(reinterpret_cast<const char*>(t.data()), t.size());
      if (s.find('\0') != std::string::npos || !utf8_to_utf16(s, false)) return {"", what + ": not a UTF-8 URL"};
      static constexpr std::string_view kScheme = "file://";
      if (s.compare(0, kScheme.size(), kScheme) != 0) return {"", what + ": \"" + s + "\" is not a file:// URL"};
      s.erase(0, kScheme.size());
      if (s.compare(0, 10, "localhost/") == 0) s.erase(0, 9);
      if (s.empty()) return {"", what + ": empty path"};
      return {s, ""};
    }
    default:
      return {"", what + ": platform code not supported (only W2ku, W2ru, MacX)"};
  }
}

std::optional<std::vector<uint8_t>> encode_locator(uint32_t code, std::string_view path) {
  if (path.empty()) return std::nullopt;
  switch (code) {
    case kPlatMacx: {
      std::string url = "file://";
      url += path;
      if (!utf8_to_utf16(url, false)) return std::nullopt;
      return std::vector<uint8_t>(url.begin(), url.end());
    }
    case kPlatW2ku:
    case kPlatW2ru: {
      std::string p;
      if (path.front() != '/') {
        if (path.substr(0, 2) == "./") path.remove_prefix(2);
        p = ".\\";
      }
      p += path;
      std::replace(p.begin(), p.end(), '/', '\\');
      return utf8_to_utf16(p, false);
    }
    default:
      return std::nullopt;
  }
}

Footer new_footer(DiskType type, uint64_t size, uint32_t timestamp, const Uuid& uuid) noexcept {
  Footer f;
  f.data_offset = type == DiskType::kFixed ? kNoDataOffset : kFooterSize;
  f.timestamp = timestamp;
  f.creator_app = {'t', 'a', 'p', '\0'};
  f.creator_version = 0x00010001;
  f.creator_os = 0;
  f.original_size = size;
  f.current_size = size;
  f.geometry = chs_for_size(size);
  f.disk_type = static_cast<uint32_t>(type);
  f.uuid = uuid;
  return f;
}

}  // namespace xenpath::vhd
