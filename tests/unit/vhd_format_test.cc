// The VHD format, pure: layouts, checksums, geometry, validation messages,
// bitmaps, BAT arithmetic, text encodings of parent names and locators.
#include "blkback/vhd_format.h"

#include <gtest/gtest.h>

#include <cstring>

namespace xenpath::vhd {
namespace {

Uuid test_uuid() {
  Uuid u{};
  for (size_t i = 0; i < u.size(); ++i) u[i] = static_cast<uint8_t>(0x10 + i);
  return u;
}

TEST(VhdFormat, FooterLayoutIsTheSpecs) {
  Footer f = new_footer(DiskType::kDynamic, 10ull << 30, 0x12345678, test_uuid());
  const auto raw = encode_footer(f);
  EXPECT_EQ(std::memcmp(raw.data(), "conectix", 8), 0);
  EXPECT_EQ(load_be32(raw.data() + 8), kFeatureReserved);
  EXPECT_EQ(load_be32(raw.data() + 12), 0x00010000u);
  EXPECT_EQ(load_be64(raw.data() + 16), 512u);  // header right after the copy
  EXPECT_EQ(load_be32(raw.data() + 24), 0x12345678u);
  EXPECT_EQ(std::memcmp(raw.data() + 28, "tap\0", 4), 0);
  EXPECT_EQ(load_be64(raw.data() + 40), 10ull << 30);
  EXPECT_EQ(load_be64(raw.data() + 48), 10ull << 30);
  EXPECT_EQ(load_be32(raw.data() + 60), 3u);
  EXPECT_EQ(raw[68], 0x10);
  EXPECT_EQ(raw[83], 0x1f);
  // The checksum: one's complement of the byte sum without the field.
  uint32_t sum = 0;
  for (size_t i = 0; i < raw.size(); ++i)
    if (i < 64 || i >= 68) sum += raw[i];
  EXPECT_EQ(load_be32(raw.data() + 64), ~sum);
  // Round trip, byte for byte (reserved bytes kept).
  auto copy = raw;
  copy[85] = 1;  // blktap's "hidden" flag lives in the reserved area
  Footer g = decode_footer(copy);
  EXPECT_EQ(encode_footer(g)[85], 1);
  EXPECT_FALSE(validate_footer(decode_footer(raw), raw).has_value());
}

TEST(VhdFormat, FooterValidationNamesTheField) {
  Footer f = new_footer(DiskType::kFixed, 1 << 20, 0, test_uuid());
  auto raw = encode_footer(f);
  auto check = [](std::array<uint8_t, kFooterSize> r) {
    auto why = validate_footer(decode_footer(r), r);
    return why.value_or("");
  };
  EXPECT_EQ(check(raw), "");
  auto bad = raw;
  bad[100] ^= 1;
  EXPECT_NE(check(bad).find("footer checksum"), std::string::npos);
  bad = raw;
  bad[0] = 'X';
  EXPECT_NE(check(bad).find("footer cookie"), std::string::npos);

  auto reencode = [](Footer ff) { return encode_footer(ff); };
  Footer t = f;
  t.disk_type = 5;
  EXPECT_NE(check(reencode(t)).find("footer disk type"), std::string::npos);
  t = f;
  t.current_size = 1000;
  EXPECT_NE(check(reencode(t)).find("footer current size"), std::string::npos);
  t = f;
  t.current_size = kMaxDiskSize + 512;
  EXPECT_NE(check(reencode(t)).find("2040 GiB"), std::string::npos);
  t = f;
  t.format_version = 0x00020000;
  EXPECT_NE(check(reencode(t)).find("file format version"), std::string::npos);
  t = new_footer(DiskType::kDynamic, 1 << 20, 0, test_uuid());
  t.data_offset = kNoDataOffset;
  EXPECT_NE(check(reencode(t)).find("footer data offset"), std::string::npos);
}

TEST(VhdFormat, HeaderRoundTripAndValidation) {
  const Footer f = new_footer(DiskType::kDifferencing, 5ull << 20, 0, test_uuid());
  DynamicHeader h;
  h.table_offset = 1536;
  h.max_table_entries = 3;
  h.parent_uuid = test_uuid();
  h.parent_timestamp = 77;
  h.locators[0] = ParentLocator{kPlatMacx, 512, 20, 0, 2048};
  const auto raw = encode_header(h);
  EXPECT_EQ(std::memcmp(raw.data(), "cxsparse", 8), 0);
  EXPECT_EQ(load_be64(raw.data() + 16), 1536u);
  EXPECT_EQ(load_be32(raw.data() + 28), 3u);
  EXPECT_EQ(load_be32(raw.data() + 32), kDefaultBlockSize);
  EXPECT_EQ(load_be32(raw.data() + 576), kPlatMacx);
  EXPECT_EQ(load_be64(raw.data() + 576 + 16), 2048u);
  const DynamicHeader d = decode_header(raw);
  EXPECT_EQ(encode_header(d), raw);
  EXPECT_FALSE(validate_header(d, f, raw).has_value());

  auto check = [&](DynamicHeader x) {
    const auto r = encode_header(x);
    return validate_header(decode_header(r), f, r).value_or("");
  };
  DynamicHeader x = h;
  x.max_table_entries = 2;  // 4 MiB < 5 MiB
  EXPECT_NE(check(x).find("header max table entries"), std::string::npos);
  x = h;
  x.block_size = 3 << 20;
  EXPECT_NE(check(x).find("header block size"), std::string::npos);
  x = h;
  x.table_offset = 1000;
  EXPECT_NE(check(x).find("header table offset"), std::string::npos);
  x = h;
  x.locators[2] = ParentLocator{0x41424344, 1, 1, 0, 4096};
  EXPECT_NE(check(x).find("header parent locator 2"), std::string::npos);
  x = h;
  x.locators[0].data_length = 600;
  x.locators[0].data_space = 1;  // neither 1 sector nor 1 byte holds 600 bytes
  EXPECT_NE(check(x).find("exceeds its data space"), std::string::npos);
  x.locators[0].data_space = 2;  // sectors (the spec): 1024 bytes, fits
  EXPECT_EQ(check(x), "");
  auto corrupt = raw;
  corrupt[700] ^= 0x40;
  EXPECT_NE(validate_header(decode_header(corrupt), f, corrupt).value_or("").find("header checksum"),
            std::string::npos);
}

TEST(VhdFormat, ChsGeometryFollowsTheSpec) {
  // Values computed by hand from the spec's algorithm.
  EXPECT_EQ(chs_for_size(1ull << 30), (Geometry{2080, 16, 63}));
  EXPECT_EQ(chs_for_size(10ull << 20), (Geometry{301, 4, 17}));
  EXPECT_EQ(chs_for_size(127ull << 30), (Geometry{65278, 16, 255}));
  EXPECT_EQ(chs_for_size(kMaxDiskSize), (Geometry{65535, 16, 255}));
  // The geometry never exceeds the size.
  for (uint64_t mb : {1, 3, 17, 100, 511, 4097, 65537}) EXPECT_LE(chs_for_size(mb << 20).bytes(), mb << 20);
}

TEST(VhdFormat, Timestamps) {
  EXPECT_EQ(vhd_time(946684800), 0u);
  EXPECT_EQ(vhd_time(946684800 + 86400), 86400u);
  EXPECT_EQ(unix_time(86400), 946684800 + 86400);
  EXPECT_EQ(vhd_time(0), 0u);  // before the VHD epoch: clamped
}

TEST(VhdFormat, BlockLayoutAndAppendPosition) {
  DynamicHeader h;
  h.block_size = 2u << 20;
  h.max_table_entries = 10;
  const BlockLayout l = BlockLayout::from(h);
  EXPECT_EQ(l.sectors_per_block, 4096u);
  EXPECT_EQ(l.bitmap_bytes, 512u);  // 4096 bits = 512 bytes
  EXPECT_EQ(l.data_offset(100), 100u * 512 + 512);
  EXPECT_EQ(l.sector_offset(100, 3), 100u * 512 + 512 + 3 * 512);
  EXPECT_EQ(l.block_end(100), 100u * 512 + 512 + (2u << 20));
  EXPECT_EQ(l.block_of((2u << 20) * 3 + 1024), 3u);
  EXPECT_EQ(l.sector_in_block((2u << 20) * 3 + 1024), 2u);
  // The data after the bitmap starts on a page.
  for (uint64_t eod : {2048ull, 3584ull, 4096ull, 5000ull}) {
    const uint64_t pos = l.append_position(eod);
    EXPECT_GE(pos, eod);
    EXPECT_EQ(pos % 512, 0u);
    EXPECT_EQ((pos + l.bitmap_bytes) % 4096, 0u);
    EXPECT_LT(pos - eod, 4096u + 512);
  }
  h.block_size = 4096;  // 8 sectors: one bitmap byte, stored as a sector
  EXPECT_EQ(BlockLayout::from(h).bitmap_bytes, 512u);
  h.block_size = 8u << 20;  // 16384 bits = 2048 bytes
  EXPECT_EQ(BlockLayout::from(h).bitmap_bytes, 2048u);
}

TEST(VhdFormat, BatIsBigEndianAndPadded) {
  EXPECT_EQ(bat_bytes_padded(1), 512u);
  EXPECT_EQ(bat_bytes_padded(128), 512u);
  EXPECT_EQ(bat_bytes_padded(129), 1024u);
  const std::vector<uint32_t> bat{0x01020304, kBatUnused, 7};
  std::vector<uint8_t> raw(bat_bytes_padded(3));
  encode_bat(bat, raw);
  EXPECT_EQ(raw[0], 1);
  EXPECT_EQ(raw[3], 4);
  EXPECT_EQ(raw[4], 0xFF);
  EXPECT_EQ(raw[11], 7);
  EXPECT_EQ(raw[12], 0xFF);  // padding reads as unused
  EXPECT_EQ(decode_bat(raw, 3), bat);
  uint8_t one[4];
  bat_entry_encode(0xA0B0C0D0, one);
  EXPECT_EQ(one[0], 0xA0);
  EXPECT_EQ(bat_entry_decode(one), 0xA0B0C0D0u);
  EXPECT_EQ(bat_entry_offset(1536, 5), 1556u);
}

TEST(VhdFormat, BitmapsAreMsbFirst) {
  std::vector<uint8_t> map(512, 0);
  bitmap_set(map, 0, 1);
  EXPECT_EQ(map[0], 0x80);
  bitmap_set(map, 7, 1);
  EXPECT_EQ(map[0], 0x81);
  bitmap_set(map, 13, 20);  // sectors 13..32
  EXPECT_TRUE(bitmap_test(map, 13));
  EXPECT_TRUE(bitmap_test(map, 32));
  EXPECT_FALSE(bitmap_test(map, 12));
  EXPECT_FALSE(bitmap_test(map, 33));
  EXPECT_EQ(bitmap_count(map, 4096), 22u);
  EXPECT_EQ(bitmap_run(map, 13, 4096), 20u);
  EXPECT_EQ(bitmap_run(map, 13, 5), 5u);
  EXPECT_EQ(bitmap_run(map, 33, 4096), 4096u - 33);
  EXPECT_EQ(bitmap_run(map, 1, 100), 6u);  // 1..6 clear, 7 set
  bitmap_clear(map, 14, 2);
  EXPECT_EQ(bitmap_run(map, 13, 100), 1u);
  EXPECT_EQ(bitmap_count(map, 4096), 20u);
  EXPECT_FALSE(bitmap_all_set(map, 4096));
  bitmap_set(map, 0, 4096);
  EXPECT_TRUE(bitmap_all_set(map, 4096));
  bitmap_clear(map, 4095, 1);
  EXPECT_FALSE(bitmap_all_set(map, 4096));
  EXPECT_TRUE(bitmap_all_set(map, 4095));
  // Out of range is clipped, never written past the map.
  bitmap_set(map, 4090, 100);
  EXPECT_EQ(bitmap_run(map, 4090, 1000), 6u);
}

TEST(VhdFormat, Utf16) {
  const std::string s = "b\xC3\xA4se-\xF0\x9F\x98\x80.vhd";  // ä and an astral-plane emoji
  auto le = utf8_to_utf16(s, false);
  ASSERT_TRUE(le.has_value());
  EXPECT_EQ(le->size(), 2u * 11);  // the emoji is a surrogate pair
  EXPECT_EQ(utf16_to_utf8(*le, false), s);
  auto be = utf8_to_utf16(s, true);
  EXPECT_EQ((*be)[0], 0);
  EXPECT_EQ((*be)[1], 'b');
  EXPECT_EQ(utf16_to_utf8(*be, true), s);
  const uint8_t lone_surrogate[] = {0x00, 0xD8, 0x41, 0x00};
  EXPECT_FALSE(utf16_to_utf8(lone_surrogate, false).has_value());
  EXPECT_FALSE(utf8_to_utf16("\xC0\xAF", false).has_value());  // overlong
  EXPECT_FALSE(utf8_to_utf16("\xE2\x82", false).has_value());  // truncated
  EXPECT_FALSE(utf8_to_utf16(std::string("a\0b", 3), false).has_value());
}

TEST(VhdFormat, ParentNameIsUtf16Be) {
  auto n = encode_parent_name("base.vhd");
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ((*n)[0], 0);
  EXPECT_EQ((*n)[1], 'b');
  EXPECT_EQ(decode_parent_name(*n).text, "base.vhd");
  std::array<uint8_t, 512> empty{};
  EXPECT_FALSE(decode_parent_name(empty).error.empty());
  EXPECT_FALSE(encode_parent_name(std::string(300, 'x')).has_value());  // 600 bytes
  std::array<uint8_t, 512> full{};
  for (size_t i = 0; i < full.size(); i += 2) full[i + 1] = 'y';  // no terminator
  EXPECT_EQ(decode_parent_name(full).text, std::string(256, 'y'));
}

TEST(VhdFormat, LocatorsTheWayBlktapWritesThem) {
  auto macx = encode_locator(kPlatMacx, "./base.vhd");
  ASSERT_TRUE(macx.has_value());
  EXPECT_EQ(std::string(macx->begin(), macx->end()), "file://./base.vhd");
  EXPECT_EQ(decode_locator(kPlatMacx, *macx).text, "./base.vhd");
  auto w2ru = encode_locator(kPlatW2ru, "./sub/base.vhd");
  ASSERT_TRUE(w2ru.has_value());
  EXPECT_EQ(utf16_to_utf8(*w2ru, false), ".\\sub\\base.vhd");
  EXPECT_EQ(decode_locator(kPlatW2ru, *w2ru).text, "./sub/base.vhd");
  auto w2ku = encode_locator(kPlatW2ku, "/srv/vhd/base.vhd");
  EXPECT_EQ(utf16_to_utf8(*w2ku, false), "\\srv\\vhd\\base.vhd");
  EXPECT_EQ(decode_locator(kPlatW2ku, *w2ku).text, "/srv/vhd/base.vhd");
  // Windows writers: a drive letter and a NUL terminator in the length.
  auto win = utf8_to_utf16("C:\\images\\base.vhd", false);
  win->push_back(0);
  win->push_back(0);
  EXPECT_EQ(decode_locator(kPlatW2ku, *win).text, "/images/base.vhd");
  const std::string url = "file://localhost/srv/base.vhd";
  EXPECT_EQ(decode_locator(kPlatMacx, std::span(reinterpret_cast<const uint8_t*>(url.data()), url.size())).text,
            "/srv/base.vhd");
  const std::string http = "http://x/base.vhd";
  EXPECT_NE(decode_locator(kPlatMacx, std::span(reinterpret_cast<const uint8_t*>(http.data()), http.size())).error, "");
  const uint8_t odd[] = {'a', 0, 'b'};
  EXPECT_NE(decode_locator(kPlatW2ku, odd).error, "");
  EXPECT_NE(decode_locator(kPlatMac, odd).error, "");
  EXPECT_FALSE(encode_locator(kPlatWi2k, "x").has_value());
}

}  // namespace
}  // namespace xenpath::vhd
