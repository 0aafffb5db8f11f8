// Image identities from real files, the identity registry, and the
// cache's index containers (ProbeTable, GhostFifo) against std models.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>

#include "cache/cache_key.h"
#include "cache/cache_table.h"

namespace xenpath {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/xenpath-cache-key-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { (void)std::system(("rm -rf " + path_).c_str()); }
  [[nodiscard]] std::string file(const char* name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

int write_file(const std::string& path, const std::string& content) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  return fd;
}

ImageIdentity identity_of_path(const std::string& path, const CacheUuid* uuid = nullptr) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  auto id = identity_of_fd(fd, static_cast<uint64_t>(st.st_size), uuid);
  ::close(fd);
  EXPECT_TRUE(id);
  return *id;
}

void set_mtime(const std::string& path, time_t sec) {
  const timespec ts[2] = {{sec, 0}, {sec, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, 0), 0);
}

TEST(CacheIdentity, SurvivesRenameAndHardLinkButNotRewrite) {
  TempDir dir;
  ::close(write_file(dir.file("base.img"), std::string(8192, 'a')));
  set_mtime(dir.file("base.img"), 1000);
  const ImageIdentity a = identity_of_path(dir.file("base.img"));
  ASSERT_EQ(::rename(dir.file("base.img").c_str(), dir.file("moved.img").c_str()), 0);
  EXPECT_EQ(identity_of_path(dir.file("moved.img")), a) << "a rename is the same image";
  ASSERT_EQ(::link(dir.file("moved.img").c_str(), dir.file("link.img").c_str()), 0);
  EXPECT_EQ(identity_of_path(dir.file("link.img")), a) << "a second path is the same image";

  // Rewritten in place (same inode): the mtime moves, so the identity does.
  const int fd = ::open(dir.file("moved.img").c_str(), O_WRONLY);
  ASSERT_EQ(::pwrite(fd, "b", 1, 0), 1);
  ::close(fd);
  set_mtime(dir.file("moved.img"), 2000);
  const ImageIdentity b = identity_of_path(dir.file("moved.img"));
  EXPECT_TRUE(b.same_file(a));
  EXPECT_NE(b, a);

  // Replaced by another file at the same path: another inode.
  ::close(write_file(dir.file("new.img"), std::string(8192, 'a')));
  set_mtime(dir.file("new.img"), 1000);
  ASSERT_EQ(::rename(dir.file("new.img").c_str(), dir.file("moved.img").c_str()), 0);
  const ImageIdentity c = identity_of_path(dir.file("moved.img"));
  EXPECT_FALSE(c.same_file(a));

  // The VHD UUID tells apart files the kernel's attributes do not.
  CacheUuid u1{}, u2{};
  u1[0] = 1;
  u2[0] = 2;
  EXPECT_NE(identity_of_path(dir.file("moved.img"), &u1), identity_of_path(dir.file("moved.img"), &u2));
  EXPECT_EQ(identity_of_fd(-1, 0, nullptr).error(), EBADF);
}

TEST(CacheIdentity, RegistrySharesIdsAndRetiresChangedFiles) {
  IdentityRegistry reg;
  ImageIdentity a;
  a.dev = 1;
  a.ino = 7;
  a.size = 4096;
  a.mtime_ns = 10;
  auto r1 = reg.acquire(a);
  ASSERT_TRUE(r1);
  EXPECT_TRUE(r1->fresh);
  EXPECT_NE(r1->id, kNoIdentity);
  auto r2 = reg.acquire(a);
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->id, r1->id) << "the same identity shares its id";
  EXPECT_FALSE(r2->fresh);
  EXPECT_EQ(reg.size(), 1u);

  ImageIdentity other = a;
  other.ino = 8;
  auto r3 = reg.acquire(other);
  ASSERT_TRUE(r3);
  EXPECT_NE(r3->id, r1->id);
  EXPECT_EQ(r3->replaced, kNoIdentity) << "another file replaces nothing";

  // The same file with a new mtime: a new id, the old one retired.
  ImageIdentity changed = a;
  changed.mtime_ns = 11;
  auto r4 = reg.acquire(changed);
  ASSERT_TRUE(r4);
  EXPECT_TRUE(r4->fresh);
  EXPECT_EQ(r4->replaced, r1->id);
  EXPECT_TRUE(reg.retired(r1->id));
  EXPECT_FALSE(reg.retired(r4->id));
  // The old attributes coming back are one more change, not the old id.
  auto r5 = reg.acquire(a);
  ASSERT_TRUE(r5);
  EXPECT_NE(r5->id, r1->id);
  EXPECT_EQ(r5->replaced, r4->id);

  // Releases: the retired id lives until its last reference goes.
  EXPECT_FALSE(reg.release(r1->id));
  EXPECT_TRUE(reg.identity(r1->id).has_value());
  EXPECT_TRUE(reg.release(r1->id));
  EXPECT_FALSE(reg.identity(r1->id).has_value());
  EXPECT_FALSE(reg.release(r1->id)) << "unknown ids are refused";

  // retire_if_changed: a fresh stat that matches keeps the id.
  EXPECT_FALSE(reg.retire_if_changed(r3->id, other));
  ImageIdentity grown = other;
  grown.size = 8192;
  EXPECT_TRUE(reg.retire_if_changed(r3->id, grown));
  EXPECT_TRUE(reg.retired(r3->id));
  auto r6 = reg.acquire(other);
  ASSERT_TRUE(r6);
  EXPECT_NE(r6->id, r3->id) << "a retired id is never handed out again";
}

TEST(CacheIdentity, KeyHashSpreadsNeighbouringBlocks) {
  // 64 shards from the top 6 bits: 4096 consecutive blocks of one image
  // should land in every shard, none with more than twice its share.
  std::map<uint64_t, int> per_shard;
  for (uint64_t b = 0; b < 4096; ++b) ++per_shard[block_key_hash({3, b}) >> 58];
  EXPECT_EQ(per_shard.size(), 64u);
  for (const auto& [s, n] : per_shard) EXPECT_LT(n, 128) << "shard " << s;
  EXPECT_NE(block_key_hash({1, 5}), block_key_hash({2, 5}));
  EXPECT_NE(block_key_hash({0, 0}), 0u);
}

TEST(CacheIndex, ProbeTableMatchesASetUnderChurn) {
  // Values are their own keys here; a hash with few distinct low bits makes
  // long probe runs, the case backward-shift deletion must get right.
  constexpr uint32_t kEmpty = UINT32_MAX;
  cache_detail::ProbeTable<uint32_t> t(200, kEmpty);
  auto hash_of = [](uint32_t v) { return static_cast<uint64_t>(v % 37) * 0x9e3779b97f4a7c15ULL >> 7; };
  std::set<uint32_t> model;
  std::mt19937 rng(7);
  for (int op = 0; op < 200000; ++op) {
    const uint32_t v = rng() % 400;
    uint32_t* cell = t.find(hash_of(v), [v](uint32_t x) { return x == v; });
    ASSERT_EQ(cell != nullptr, model.count(v) == 1) << "op " << op;
    if (cell != nullptr) {
      if (rng() % 2) {
        t.erase(cell, hash_of);
        model.erase(v);
      }
    } else {
      const bool ok = t.insert(hash_of(v), v);
      ASSERT_EQ(ok, model.size() < 200);
      if (ok) model.insert(v);
    }
    ASSERT_EQ(t.size(), model.size());
  }
  t.clear();
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.find(hash_of(5), [](uint32_t x) { return x == 5; }), nullptr);
}

TEST(CacheIndex, GhostFifoForgetsTheOldestFirst) {
  cache_detail::GhostFifo g(3);
  g.add(11);
  g.add(12);
  g.add(13);
  g.add(12);  // present: not added twice
  EXPECT_EQ(g.size(), 3u);
  g.add(14);  // forgets 11
  EXPECT_FALSE(g.contains(11));
  EXPECT_TRUE(g.contains(12));
  EXPECT_TRUE(g.contains(13));
  EXPECT_TRUE(g.contains(14));
  g.clear();
  EXPECT_FALSE(g.contains(14));
  EXPECT_EQ(g.size(), 0u);
}

}  // namespace
}  // namespace xenpath
