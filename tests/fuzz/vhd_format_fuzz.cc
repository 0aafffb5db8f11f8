// Fuzz target: hostile VHD metadata. Arbitrary bytes through the footer,
// header, BAT, bitmap and locator decoders (nothing may crash or read out
// of bounds; what validates must re-encode to the same bytes), and whole
// files built from the input (a valid footer and header whose fields and
// BAT come from the input, checksums fixed so the layout checks are
// reached) opened by vhd_open_file: whatever opens must have every
// allocated block inside the file and clear of metadata and of each other.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "blkback/vhd_file.h"
#include "blkback/vhd_format.h"

using namespace xenpath;
using namespace xenpath::vhd;

namespace {

struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  uint32_t u32() { return (uint32_t{u8()} << 24) | (uint32_t{u8()} << 16) | (uint32_t{u8()} << 8) | u8(); }
};

void parse_raw(const uint8_t* data, size_t size) {
  std::array<uint8_t, kFooterSize> fraw{};
  std::memcpy(fraw.data(), data, std::min(size, fraw.size()));
  const Footer f = decode_footer(fraw);
  if (!validate_footer(f, fraw)) {
    if (encode_footer(f) != fraw) std::abort();
  }
  std::array<uint8_t, kHeaderSize> hraw{};
  if (size > kFooterSize) std::memcpy(hraw.data(), data + kFooterSize, std::min(size - kFooterSize, hraw.size()));
  const DynamicHeader h = decode_header(hraw);
  if (!validate_header(h, f, hraw)) {
    if (encode_header(h) != hraw) std::abort();
    const BlockLayout l = BlockLayout::from(h);
    if (l.bitmap_bytes % kSectorSize != 0 || l.bitmap_bytes * 8ull < l.sectors_per_block) std::abort();
    const uint64_t pos = l.append_position(f.data_offset);
    if (pos % kSectorSize != 0 || (pos + l.bitmap_bytes) % 4096 != 0) std::abort();
  }
  (void)decode_parent_name(std::span<const uint8_t, 512>(hraw.data() + 64, 512));
  const std::span<const uint8_t> all(data, size);
  for (uint32_t code : {kPlatW2ku, kPlatW2ru, kPlatMacx, kPlatMac}) {
    DecodedText t = decode_locator(code, all);
    if (t.error.empty() && t.text.empty()) std::abort();
  }
  const std::vector<uint32_t> bat = decode_bat(all, static_cast<uint32_t>(size));
  if (bat.size() != size / 4) std::abort();
  std::vector<uint8_t> map(all.begin(), all.end());
  if (!map.empty()) {
    const uint32_t bits = static_cast<uint32_t>(map.size() * 8);
    const uint32_t first = size > 1 ? data[0] % bits : 0;
    const uint32_t run = bitmap_run(map, first, bits);
    if (run == 0 || first + run > bits) std::abort();
    for (uint32_t s = first; s < first + run; ++s)
      if (bitmap_test(map, s) != bitmap_test(map, first)) std::abort();
    bitmap_set(map, first, data[size - 1]);
    if (bitmap_run(map, first, data[size - 1]) != std::min<uint32_t>(data[size - 1], bits - first)) std::abort();
  }
}

// A file from the input: footer copy, header, BAT, then room for blocks.
void open_built(const uint8_t* data, size_t size) {
  Reader r{data, size};
  const uint32_t block_size = 1u << (12 + r.u8() % 10);  // 4 KiB .. 2 MiB
  const uint32_t blocks = 1 + r.u8() % 16;
  const uint64_t disk = uint64_t{blocks} * block_size - (r.u8() % 2) * kSectorSize;
  Footer f = new_footer(r.u8() % 4 == 0 ? DiskType::kDifferencing : DiskType::kDynamic, disk, 0, Uuid{});
  DynamicHeader h;
  h.block_size = block_size;
  h.max_table_entries = blocks + r.u8() % 3;
  h.table_offset = kFooterSize + kHeaderSize + (r.u8() % 4) * kSectorSize;
  for (size_t i = 0; i < 2; ++i) {
    if (r.u8() % 2 == 0) continue;
    h.locators[i] = ParentLocator{kPlatMacx, r.u8(), 1u + r.u8(), 0, uint64_t{r.u32() % 65536u}};
  }
  const BlockLayout l = BlockLayout::from(h);
  std::vector<uint32_t> bat(h.max_table_entries, kBatUnused);
  const uint64_t meta_end = h.table_offset + bat_bytes_padded(h.max_table_entries);
  for (uint32_t& e : bat) {
    const uint8_t sel = r.u8();
    if (sel % 3 == 0) continue;
    // Mostly plausible (after the metadata, block-sized strides), sometimes anything.
    e = sel % 3 == 1
            ? static_cast<uint32_t>(meta_end / kSectorSize + (r.u8() % 8) * (l.block_bytes() / 2 / kSectorSize))
            : r.u32();
  }
  const uint64_t file_size =
      std::min<uint64_t>(meta_end + uint64_t{r.u8() % 10u} * l.block_bytes() + kFooterSize, 64ull << 20);
  const int fd = ::memfd_create("vhd-fuzz", MFD_CLOEXEC);
  if (fd < 0) return;
  if (::ftruncate(fd, static_cast<off_t>(file_size)) == 0) {
    const auto fraw = encode_footer(f);
    const auto hraw = encode_header(h);
    std::vector<uint8_t> braw(bat_bytes_padded(h.max_table_entries));
    encode_bat(bat, braw);
    vhd_pwrite_full(fd, fraw.data(), fraw.size(), 0);
    vhd_pwrite_full(fd, hraw.data(), hraw.size(), kFooterSize);
    vhd_pwrite_full(fd, braw.data(), braw.size(), h.table_offset);
    vhd_pwrite_full(fd, fraw.data(), fraw.size(), file_size - kFooterSize);
    VhdOpenOptions o;
    o.drop_dangling_blocks = (size % 2) != 0;
    auto lv = vhd_open_file("/proc/self/fd/" + std::to_string(fd), o);
    if (lv) {
      const VhdLevel& v = *lv;
      if (v.end_of_data > v.footer_offset || v.bat.size() != h.max_table_entries) std::abort();
      std::vector<std::pair<uint64_t, uint64_t>> spans;
      for (uint32_t e : v.bat) {
        if (e == kBatUnused) continue;
        const uint64_t s = BlockLayout::bitmap_offset(e);
        if (s < meta_end || v.layout.block_end(e) > v.footer_offset) std::abort();
        spans.emplace_back(s, v.layout.block_end(e));
      }
      std::sort(spans.begin(), spans.end());
      for (size_t i = 1; i < spans.size(); ++i)
        if (spans[i].first < spans[i - 1].second) std::abort();
    } else if (lv.error().message.empty() || lv.error().code == 0) {
      std::abort();
    }
  }
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    open_built(data + 1, size - 1);
  } else {
    parse_raw(data + 1, size - 1);
  }
  return 0;
}
