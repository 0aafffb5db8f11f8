// The VHD on-disk format (Microsoft "Virtual Hard Disk Image Format
// Specification", 2006), pure: byte layouts, big-endian (de)serialisation,
// checksums, CHS geometry, timestamps, UUIDs, parent locator encodings, BAT
// and sector-bitmap arithmetic, and validation whose messages name the field.
// No file I/O: vhd_file.h opens files and chains on top of this, and the
// datapath (image_vhd) uses the arithmetic and serialisers below.
//
// A VHD file:
//   fixed:        [data: current_size bytes][footer 512]
//   dynamic/diff: [footer copy 512][dynamic header 1024][BAT][parent locators]
//                 [block: sector bitmap (padded to 512) + block_size data]...
//                 [footer 512]
// The BAT holds one big-endian uint32 per block: the sector (512 B unit)
// where the block's bitmap starts, or 0xFFFFFFFF when unallocated. A set
// bitmap bit (bit 7 of byte 0 is sector 0) says the sector is in this file;
// a clear bit reads from the parent (differencing) or as zeros (dynamic).
//
// Threads: functions only, no state; callable from any thread. noexcept
// where the datapath uses them (arithmetic, bitmaps, serialisers).
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xenpath::vhd {

constexpr uint32_t kSectorSize = 512;
constexpr size_t kFooterSize = 512;
constexpr size_t kHeaderSize = 1024;
constexpr uint32_t kBatUnused = 0xFFFFFFFFu;
// The format's limit (and QEMU's VHD_MAX_SECTORS): 0xFF000000 sectors.
constexpr uint64_t kMaxDiskSize = 2040ull << 30;
constexpr uint32_t kDefaultBlockSize = 2u << 20;
constexpr uint32_t kMinBlockSize = kSectorSize;
constexpr uint32_t kMaxBlockSize = 256u << 20;
constexpr uint32_t kFeatureTemporary = 0x1;
constexpr uint32_t kFeatureReserved = 0x2;  // "must always be set"
constexpr uint32_t kFormatVersion = 0x00010000;
constexpr uint32_t kHeaderVersion = 0x00010000;
// The cookies that open the footer ("conectix": also what format probing
// looks for) and the dynamic disk header.
constexpr std::array<char, 8> kFooterCookie{'c', 'o', 'n', 'e', 'c', 't', 'i', 'x'};
constexpr std::array<char, 8> kHeaderCookie{'c', 'x', 's', 'p', 'a', 'r', 's', 'e'};
constexpr uint64_t kNoDataOffset = 0xFFFFFFFFFFFFFFFFull;
constexpr size_t kLocatorCount = 8;
// Bound on a locator's payload we read: a path, never megabytes.
constexpr uint32_t kMaxLocatorBytes = 64 * 1024;
// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
constexpr int64_t kVhdEpoch = 946684800;

enum class DiskType : uint32_t { kFixed = 2, kDynamic = 3, kDifferencing = 4 };
const char* disk_type_name(uint32_t type) noexcept;

// Platform codes of parent locators (big-endian four-character codes).
constexpr uint32_t kPlatNone = 0;
constexpr uint32_t kPlatWi2r = 0x57693272;  // "Wi2r" (deprecated)
constexpr uint32_t kPlatWi2k = 0x5769326B;  // "Wi2k" (deprecated)
constexpr uint32_t kPlatW2ru = 0x57327275;  // "W2ru": relative path, UTF-16LE
constexpr uint32_t kPlatW2ku = 0x57326B75;  // "W2ku": absolute path, UTF-16LE
constexpr uint32_t kPlatMac = 0x4D616320;   // "Mac " (alias record, not readable here)
constexpr uint32_t kPlatMacx = 0x4D616358;  // "MacX": file:// URL, UTF-8
std::string platform_code_name(uint32_t code);

using Uuid = std::array<uint8_t, 16>;
std::string uuid_string(const Uuid& u);
[[nodiscard]] inline bool uuid_is_nil(const Uuid& u) noexcept {
  for (uint8_t b : u)
    if (b != 0) return false;
  return true;
}

struct Geometry {
  uint16_t cylinders = 0;
  uint8_t heads = 0;
  uint8_t sectors_per_track = 0;
  [[nodiscard]] uint64_t bytes() const noexcept {
    return uint64_t{cylinders} * heads * sectors_per_track * kSectorSize;
  }
  bool operator==(const Geometry&) const = default;
};
// The specification's CHS algorithm (appendix), sizes above its maximum
// capped at 65535/16/255.
Geometry chs_for_size(uint64_t bytes) noexcept;

// VHD timestamps: seconds since 2000-01-01 00:00:00 UTC.
[[nodiscard]] constexpr uint32_t vhd_time(int64_t unix_seconds) noexcept {
  return unix_seconds <= kVhdEpoch ? 0 : static_cast<uint32_t>(unix_seconds - kVhdEpoch);
}
[[nodiscard]] constexpr int64_t unix_time(uint32_t vhd_seconds) noexcept { return kVhdEpoch + vhd_seconds; }

// Big-endian helpers (the whole format is big-endian).
[[nodiscard]] inline uint32_t load_be32(const uint8_t* p) noexcept {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
[[nodiscard]] inline uint64_t load_be64(const uint8_t* p) noexcept {
  return (uint64_t{load_be32(p)} << 32) | load_be32(p + 4);
}
inline void store_be32(uint8_t* p, uint32_t v) noexcept {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}
inline void store_be64(uint8_t* p, uint64_t v) noexcept {
  store_be32(p, static_cast<uint32_t>(v >> 32));
  store_be32(p + 4, static_cast<uint32_t>(v));
}

// One's complement of the byte sum, the checksum field counted as zero.
uint32_t checksum(std::span<const uint8_t> bytes, size_t checksum_offset) noexcept;

// The hard disk footer, host order. `reserved` keeps the 427 trailing bytes
// as read (blktap keeps its "hidden" flag in the first one) so a footer
// re-encoded after a decode is byte-identical.
struct Footer {
  std::array<char, 8> cookie = kFooterCookie;
  uint32_t features = kFeatureReserved;
  uint32_t format_version = kFormatVersion;
  uint64_t data_offset = kNoDataOffset;  // the dynamic header's offset
  uint32_t timestamp = 0;
  std::array<char, 4> creator_app{};
  uint32_t creator_version = 0;
  uint32_t creator_os = 0;
  uint64_t original_size = 0;
  uint64_t current_size = 0;
  Geometry geometry;
  uint32_t disk_type = 0;
  uint32_t checksum = 0;  // as stored (decode) / as computed (encode)
  Uuid uuid{};
  uint8_t saved_state = 0;
  std::array<uint8_t, 427> reserved{};

  [[nodiscard]] bool fixed() const noexcept { return disk_type == static_cast<uint32_t>(DiskType::kFixed); }
  [[nodiscard]] bool differencing() const noexcept {
    return disk_type == static_cast<uint32_t>(DiskType::kDifferencing);
  }
  [[nodiscard]] bool sparse() const noexcept {  // dynamic or differencing: has a header and BAT
    return disk_type == static_cast<uint32_t>(DiskType::kDynamic) || differencing();
  }
};

struct ParentLocator {
  uint32_t code = kPlatNone;
  uint32_t data_space = 0;  // sectors per the spec; bytes as blktap and Windows write it
  uint32_t data_length = 0;
  uint32_t reserved = 0;
  uint64_t data_offset = 0;
};

// The dynamic disk header, host order.
struct DynamicHeader {
  std::array<char, 8> cookie = kHeaderCookie;
  uint64_t data_offset = kNoDataOffset;
  uint64_t table_offset = 0;  // BAT
  uint32_t header_version = kHeaderVersion;
  uint32_t max_table_entries = 0;
  uint32_t block_size = kDefaultBlockSize;
  uint32_t checksum = 0;
  Uuid parent_uuid{};
  uint32_t parent_timestamp = 0;
  uint32_t reserved1 = 0;
  std::array<uint8_t, 512> parent_name{};  // UTF-16BE, NUL-terminated or full
  std::array<ParentLocator, kLocatorCount> locators{};
  std::array<uint8_t, 256> reserved2{};
};

// Decoding never fails (any 512/1024 bytes decode); validation says why a
// decoded structure is unusable. Encoding computes and stores the checksum.
Footer decode_footer(std::span<const uint8_t, kFooterSize> in) noexcept;
void encode_footer(const Footer& f, std::span<uint8_t, kFooterSize> out) noexcept;
std::array<uint8_t, kFooterSize> encode_footer(const Footer& f) noexcept;
DynamicHeader decode_header(std::span<const uint8_t, kHeaderSize> in) noexcept;
void encode_header(const DynamicHeader& h, std::span<uint8_t, kHeaderSize> out) noexcept;
std::array<uint8_t, kHeaderSize> encode_header(const DynamicHeader& h) noexcept;

// Validation: std::nullopt when usable, else "<field>: <problem>" (the
// caller prefixes the file). `raw` is the bytes the structure came from,
// for the checksum.
std::optional<std::string> validate_footer(const Footer& f, std::span<const uint8_t, kFooterSize> raw);
// The header alone and against its footer (table size covers the disk).
std::optional<std::string> validate_header(const DynamicHeader& h, const Footer& f,
                                           std::span<const uint8_t, kHeaderSize> raw);

// A VHD's block geometry, from its header. All offsets in bytes.
struct BlockLayout {
  uint32_t block_size = 0;         // data bytes per block
  uint32_t sectors_per_block = 0;  // block_size / 512
  uint32_t bitmap_bytes = 0;       // as stored: ceil(spb / 8) rounded up to 512
  uint32_t entries = 0;            // BAT entries (max_table_entries)

  static BlockLayout from(const DynamicHeader& h) noexcept;
  [[nodiscard]] uint64_t block_bytes() const noexcept { return uint64_t{bitmap_bytes} + block_size; }
  // Where a block's bitmap / data / a sector of its data lie in the file.
  [[nodiscard]] static uint64_t bitmap_offset(uint32_t bat_entry) noexcept { return uint64_t{bat_entry} * kSectorSize; }
  [[nodiscard]] uint64_t data_offset(uint32_t bat_entry) const noexcept {
    return bitmap_offset(bat_entry) + bitmap_bytes;
  }
  [[nodiscard]] uint64_t sector_offset(uint32_t bat_entry, uint32_t sector_in_block) const noexcept {
    return data_offset(bat_entry) + uint64_t{sector_in_block} * kSectorSize;
  }
  [[nodiscard]] uint64_t block_end(uint32_t bat_entry) const noexcept {
    return bitmap_offset(bat_entry) + block_bytes();
  }
  // Block index and sector within it of a virtual byte offset.
  [[nodiscard]] uint32_t block_of(uint64_t virt) const noexcept { return static_cast<uint32_t>(virt / block_size); }
  [[nodiscard]] uint32_t sector_in_block(uint64_t virt) const noexcept {
    return static_cast<uint32_t>((virt % block_size) / kSectorSize);
  }
  // Where to put a new block appended at `end_of_data`: the bitmap's offset
  // (sector aligned), chosen so the data starts on a `data_align` boundary
  // (page-aligned data for O_DIRECT, as tapdisk does). The BAT entry is
  // the result / 512.
  [[nodiscard]] uint64_t append_position(uint64_t end_of_data, uint32_t data_align = 4096) const noexcept;
};

// The BAT: big-endian on disk, host order in memory.
[[nodiscard]] inline uint32_t bat_entry_decode(const uint8_t* p) noexcept { return load_be32(p); }
inline void bat_entry_encode(uint32_t entry, uint8_t* out) noexcept { store_be32(out, entry); }
// Byte offset of entry `block` in the file and the 512-byte sector holding it.
[[nodiscard]] inline uint64_t bat_entry_offset(uint64_t table_offset, uint32_t block) noexcept {
  return table_offset + uint64_t{block} * 4;
}
// The BAT as stored: entries * 4 rounded up to a sector.
[[nodiscard]] inline uint64_t bat_bytes_padded(uint32_t entries) noexcept {
  return (uint64_t{entries} * 4 + kSectorSize - 1) / kSectorSize * kSectorSize;
}
std::vector<uint32_t> decode_bat(std::span<const uint8_t> in, uint32_t entries);
// `out` holds bat_bytes_padded(bat.size()); padding entries are written as unused (0xFF).
void encode_bat(std::span<const uint32_t> bat, std::span<uint8_t> out) noexcept;

// Sector bitmaps (MSB first).
[[nodiscard]] inline bool bitmap_test(std::span<const uint8_t> map, uint32_t sector) noexcept {
  return (map[sector >> 3] & (0x80u >> (sector & 7))) != 0;
}
void bitmap_set(std::span<uint8_t> map, uint32_t first, uint32_t count) noexcept;
void bitmap_clear(std::span<uint8_t> map, uint32_t first, uint32_t count) noexcept;
// Length of the run of sectors with the same bit as `first`, at most `limit`.
uint32_t bitmap_run(std::span<const uint8_t> map, uint32_t first, uint32_t limit) noexcept;
// Every one of the first `sectors` bits set (the block is fully allocated).
bool bitmap_all_set(std::span<const uint8_t> map, uint32_t sectors) noexcept;
uint32_t bitmap_count(std::span<const uint8_t> map, uint32_t sectors) noexcept;

// Parent names and locators. Paths come out as POSIX paths in UTF-8
// (backslashes turned into slashes, a leading "C:" or ".\" dropped); they
// are relative when the locator stored a relative path. Errors name what
// was wrong with the bytes.
struct DecodedText {
  std::string text;
  std::string error;  // empty on success
};
DecodedText decode_parent_name(std::span<const uint8_t, 512> utf16be);
// `name` (UTF-8, usually the parent's basename) as UTF-16BE, NUL padded;
// nullopt when it does not fit in 512 bytes or is not valid UTF-8.
std::optional<std::array<uint8_t, 512>> encode_parent_name(std::string_view name);
DecodedText decode_locator(uint32_t code, std::span<const uint8_t> data);
// The locator payload for `path` (a POSIX path, relative or absolute) the
// way blktap's vhd-util writes it: MacX "file://" + path in UTF-8; W2ku and
// W2ru the path in UTF-16LE with '\' separators, relative ones prefixed
// ".\". nullopt for other codes or invalid UTF-8.
std::optional<std::vector<uint8_t>> encode_locator(uint32_t code, std::string_view path);

// UTF-8 <-> UTF-16 (little or big endian); nullopt on malformed input
// (unpaired surrogates, overlong or truncated sequences, NUL).
std::optional<std::string> utf16_to_utf8(std::span<const uint8_t> in, bool big_endian);
std::optional<std::vector<uint8_t>> utf8_to_utf16(std::string_view in, bool big_endian);

// A footer for a new image (creator "tap\0" version 1.1 so QEMU 7.2 takes
// the size from current_size, see docs/vhd.md; no batmap promised).
Footer new_footer(DiskType type, uint64_t size, uint32_t timestamp, const Uuid& uuid) noexcept;

}  // namespace xenpath::vhd
