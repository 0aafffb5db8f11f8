// XsStore semantics: the rules of C xenstored as libxenstore clients see
// them (paths, permissions, transactions, watches, quotas, counters).
#include "sim/xs_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace xenpath::sim {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr XsPerm P(DomId d, XsPerm::Access a) { return XsPerm{d, a}; }

class XsStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    d0 = st.add_connection(0, XsConnKind::kInProcess);
    d5 = st.add_connection(5, XsConnKind::kInProcess);
    d7 = st.add_connection(7, XsConnKind::kInProcess);
  }

  // Gives dom`d` its home directory, owned by it, as a toolstack does.
  void make_home(DomId d) {
    std::string home = "/local/domain/" + std::to_string(d);
    ASSERT_TRUE(st.mkdir(d0, 0, home));
    const XsPerm perms[] = {P(d, XsPerm::kNone)};
    ASSERT_TRUE(st.set_perms(d0, 0, home, perms));
  }

  std::vector<XsWatchEvent> events(XsConnId c) {
    std::vector<XsWatchEvent> out;
    st.pop_events(c, out, 1000);
    return out;
  }
  std::vector<std::string> event_paths(XsConnId c) {
    std::vector<std::string> out;
    for (auto& e : events(c)) out.push_back(e.path);
    return out;
  }

  XsStore st;
  XsConnId d0 = 0, d5 = 0, d7 = 0;
};

// ------------------------------------------------------------------ nodes

TEST_F(XsStoreTest, StartsWithXenstoredInitialTree) {
  EXPECT_EQ(st.node_count(), 3u);
  EXPECT_THAT(*st.directory(d0, 0, "/"), ElementsAre("tool"));
  EXPECT_THAT(*st.directory(d0, 0, "/tool"), ElementsAre("xenstored"));
  EXPECT_THAT(*st.get_perms(d0, 0, "/"), ElementsAre(P(0, XsPerm::kNone)));
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, WriteCreatesMissingParentsAndReadsBack) {
  ASSERT_TRUE(st.write(d0, 0, "/a/b/c", "value"));
  EXPECT_EQ(*st.read(d0, 0, "/a/b/c"), "value");
  EXPECT_EQ(*st.read(d0, 0, "/a/b"), "");
  EXPECT_EQ(*st.read(d0, 0, "/a"), "");
  EXPECT_THAT(*st.directory(d0, 0, "/a"), ElementsAre("b"));
  EXPECT_EQ(st.node_count(), 6u);
  ASSERT_TRUE(st.write(d0, 0, "/a/b/c", std::string("bin\0ary", 7)));
  EXPECT_EQ(*st.read(d0, 0, "/a/b/c"), std::string("bin\0ary", 7));
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, ReadOfMissingNodeIsEnoent) {
  EXPECT_EQ(st.read(d0, 0, "/nope").error(), ENOENT);
  EXPECT_EQ(st.directory(d0, 0, "/nope").error(), ENOENT);
  EXPECT_EQ(st.get_perms(d0, 0, "/nope/deeper").error(), ENOENT);
}

TEST_F(XsStoreTest, MkdirIsIdempotentAndKeepsValue) {
  ASSERT_TRUE(st.write(d0, 0, "/m", "keep"));
  ASSERT_TRUE(st.mkdir(d0, 0, "/m"));
  EXPECT_EQ(*st.read(d0, 0, "/m"), "keep");
  ASSERT_TRUE(st.mkdir(d0, 0, "/m/x/y"));
  EXPECT_EQ(*st.read(d0, 0, "/m/x/y"), "");
  ASSERT_TRUE(st.mkdir(d0, 0, "/m/x/y"));
  EXPECT_THAT(*st.directory(d0, 0, "/m/x"), ElementsAre("y"));
}

TEST_F(XsStoreTest, RmRemovesSubtreeWithXenstoredMissingNodeRules) {
  ASSERT_TRUE(st.write(d0, 0, "/r/a/b", "1"));
  ASSERT_TRUE(st.write(d0, 0, "/r/a/c", "2"));
  ASSERT_TRUE(st.write(d0, 0, "/r/keep", "3"));
  size_t before = st.node_count();
  ASSERT_TRUE(st.rm(d0, 0, "/r/a"));
  EXPECT_EQ(st.node_count(), before - 3);
  EXPECT_EQ(st.read(d0, 0, "/r/a/b").error(), ENOENT);
  EXPECT_THAT(*st.directory(d0, 0, "/r"), ElementsAre("keep"));
  // Missing node whose parent exists: success, as xs_rm documents.
  EXPECT_TRUE(st.rm(d0, 0, "/r/a"));
  // Missing parent too: ENOENT.
  EXPECT_EQ(st.rm(d0, 0, "/r/a/b").error(), ENOENT);
  EXPECT_EQ(st.rm(d0, 0, "/").error(), EINVAL);
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, DirectoryListsChildrenSorted) {
  for (const char* n : {"zeta", "alpha", "mid", "0"}) ASSERT_TRUE(st.write(d0, 0, std::string("/d/") + n, ""));
  EXPECT_THAT(*st.directory(d0, 0, "/d"), ElementsAre("0", "alpha", "mid", "zeta"));
  EXPECT_THAT(*st.directory(d0, 0, "/d/alpha"), IsEmpty());
}

TEST_F(XsStoreTest, RelativePathsResolveAgainstTheCallersDomainHome) {
  make_home(5);
  ASSERT_TRUE(st.write(d5, 0, "device/vbd/51712/state", "1"));
  EXPECT_EQ(*st.read(d0, 0, "/local/domain/5/device/vbd/51712/state"), "1");
  EXPECT_EQ(*st.read(d5, 0, "device/vbd/51712/state"), "1");
  ASSERT_TRUE(st.write(d0, 0, "mine", "x"));
  EXPECT_EQ(*st.read(d0, 0, "/local/domain/0/mine"), "x");
  EXPECT_EQ(st.get_domain_path(d5, 5), "/local/domain/5");
}

TEST_F(XsStoreTest, RejectsMalformedPathsAndOversizeValues) {
  for (std::string bad : {"", "/a/", "/a//b", "/a b", "/a\nb", "/tab\tx", "/q?", "@releaseDomain"}) {
    EXPECT_EQ(st.write(d0, 0, bad, "v").error(), EINVAL) << bad;
    EXPECT_EQ(st.read(d0, 0, bad).error(), EINVAL) << bad;
  }
  EXPECT_EQ(st.write(d0, 0, std::string("/nul\0x", 6), "v").error(), EINVAL);
  EXPECT_TRUE(st.write(d0, 0, "/ok-chars_@09AZ", "v"));

  // XENSTORE_REL_PATH_MAX characters, plus a domain's own prefix.
  std::string name(XENSTORE_REL_PATH_MAX - 1, 'n');
  EXPECT_TRUE(st.write(d0, 0, "/" + name, "v"));
  EXPECT_EQ(st.write(d0, 0, "/" + name + "n", "v").error(), EINVAL);
  std::string home = "/local/domain/0/";
  EXPECT_TRUE(st.write(d0, 0, home + name + "n", "v"));
  EXPECT_EQ(st.write(d0, 0, home + name + "nn", "v").error(), EINVAL);

  EXPECT_TRUE(st.write(d0, 0, "/big", std::string(XENSTORE_PAYLOAD_MAX, 'v')));
  EXPECT_EQ(st.write(d0, 0, "/big", std::string(XENSTORE_PAYLOAD_MAX + 1, 'v')).error(), E2BIG);
}

// ------------------------------------------------------------------ permissions

TEST_F(XsStoreTest, UnprivilegedDomainCannotTouchDom0Nodes) {
  ASSERT_TRUE(st.write(d0, 0, "/secret/key", "s"));
  EXPECT_EQ(st.read(d5, 0, "/secret/key").error(), EACCES);
  EXPECT_EQ(st.write(d5, 0, "/secret/key", "x").error(), EACCES);
  EXPECT_EQ(st.write(d5, 0, "/secret/new", "x").error(), EACCES);
  EXPECT_EQ(st.mkdir(d5, 0, "/secret").error(), EACCES);  // even though it exists
  EXPECT_EQ(st.rm(d5, 0, "/secret/key").error(), EACCES);
  EXPECT_EQ(st.directory(d5, 0, "/secret").error(), EACCES);
  EXPECT_EQ(st.get_perms(d5, 0, "/secret").error(), EACCES);
  // A missing node below an unreadable one is EACCES too: no probing.
  EXPECT_EQ(st.read(d5, 0, "/secret/missing").error(), EACCES);
  EXPECT_EQ(st.read(d5, 0, "/nothing/here").error(), EACCES);
  EXPECT_EQ(*st.read(d0, 0, "/secret/key"), "s");
}

TEST_F(XsStoreTest, GrantedAccessIsExactlyWhatTheListSays) {
  ASSERT_TRUE(st.write(d0, 0, "/g/node", "v"));
  const XsPerm read_for_5[] = {P(0, XsPerm::kNone), P(5, XsPerm::kRead)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/g", read_for_5));
  ASSERT_TRUE(st.set_perms(d0, 0, "/g/node", read_for_5));
  EXPECT_EQ(*st.read(d5, 0, "/g/node"), "v");
  EXPECT_EQ(st.write(d5, 0, "/g/node", "x").error(), EACCES);
  EXPECT_EQ(st.read(d7, 0, "/g/node").error(), EACCES);
  // Readable parent: a missing child is honestly ENOENT.
  EXPECT_EQ(st.read(d5, 0, "/g/missing").error(), ENOENT);
  // ...but creating it needs write on the parent.
  EXPECT_EQ(st.write(d5, 0, "/g/missing", "x").error(), EACCES);

  // The first entry is the default for everyone not listed.
  const XsPerm default_read[] = {P(0, XsPerm::kRead), P(5, XsPerm::kNone)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/g/node", default_read));
  EXPECT_EQ(*st.read(d7, 0, "/g/node"), "v");
  EXPECT_EQ(st.read(d5, 0, "/g/node").error(), EACCES);
}

TEST_F(XsStoreTest, NewNodesInheritParentPermsAndUnprivilegedCreatorOwnsThem) {
  ASSERT_TRUE(st.mkdir(d0, 0, "/shared"));
  const XsPerm perms[] = {P(0, XsPerm::kNone), P(5, XsPerm::kBoth), P(7, XsPerm::kRead)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/shared", perms));

  ASSERT_TRUE(st.write(d0, 0, "/shared/by0", "a"));
  EXPECT_THAT(*st.get_perms(d0, 0, "/shared/by0"),
              ElementsAre(P(0, XsPerm::kNone), P(5, XsPerm::kBoth), P(7, XsPerm::kRead)));

  ASSERT_TRUE(st.write(d5, 0, "/shared/by5/deep", "b"));
  for (const char* p : {"/shared/by5", "/shared/by5/deep"})
    EXPECT_THAT(*st.get_perms(d0, 0, p), ElementsAre(P(5, XsPerm::kNone), P(5, XsPerm::kBoth), P(7, XsPerm::kRead)))
        << p;
  EXPECT_EQ(st.nodes_owned(5), 2u);
  EXPECT_EQ(*st.read(d7, 0, "/shared/by5/deep"), "b");
  EXPECT_EQ(st.write(d7, 0, "/shared/by5/deep", "c").error(), EACCES);
}

TEST_F(XsStoreTest, SetPermsRequiresOwnershipAndUnprivilegedCannotGiveNodesAway) {
  make_home(5);
  ASSERT_TRUE(st.write(d5, 0, "data", "x"));
  const XsPerm share[] = {P(5, XsPerm::kNone), P(7, XsPerm::kRead)};
  ASSERT_TRUE(st.set_perms(d5, 0, "data", share));
  EXPECT_EQ(*st.read(d7, 0, "/local/domain/5/data"), "x");

  const XsPerm give_away[] = {P(7, XsPerm::kNone)};
  EXPECT_EQ(st.set_perms(d5, 0, "data", give_away).error(), EPERM);

  // dom7 may write but does not own: still no set_perms.
  const XsPerm write_for_7[] = {P(5, XsPerm::kNone), P(7, XsPerm::kBoth)};
  ASSERT_TRUE(st.set_perms(d5, 0, "data", write_for_7));
  ASSERT_TRUE(st.write(d7, 0, "/local/domain/5/data", "from7"));
  const XsPerm grab[] = {P(5, XsPerm::kNone), P(7, XsPerm::kBoth), P(9, XsPerm::kBoth)};
  EXPECT_EQ(st.set_perms(d7, 0, "/local/domain/5/data", grab).error(), EACCES);

  // dom0 may give anything to anyone.
  ASSERT_TRUE(st.set_perms(d0, 0, "/local/domain/5/data", give_away));
  EXPECT_THAT(*st.get_perms(d0, 0, "/local/domain/5/data"), ElementsAre(P(7, XsPerm::kNone)));
  EXPECT_EQ(st.nodes_owned(7), 1u);

  EXPECT_EQ(st.set_perms(d0, 0, "/local/domain/5/data", {}).error(), EINVAL);
  std::vector<XsPerm> too_many(kXsMaxPermsPerNode + 1, P(5, XsPerm::kRead));
  too_many[0] = P(5, XsPerm::kNone);
  EXPECT_EQ(st.set_perms(d5, 0, "/local/domain/5", too_many).error(), ENOSPC);
  EXPECT_TRUE(st.set_perms(d0, 0, "/local/domain/5", too_many));
  const XsPerm bad_access[] = {XsPerm{5, static_cast<XsPerm::Access>(7)}};
  EXPECT_EQ(st.set_perms(d0, 0, "/local/domain/5", bad_access).error(), EINVAL);
}

TEST_F(XsStoreTest, TargetDomainActsAsItsTarget) {
  make_home(5);
  ASSERT_TRUE(st.write(d5, 0, "private", "p"));
  EXPECT_EQ(st.read(d7, 0, "/local/domain/5/private").error(), EACCES);
  st.introduce_domain(5);
  st.introduce_domain(7);
  ASSERT_TRUE(st.set_target(d0, 7, 5));  // dom7 is dom5's device model
  EXPECT_EQ(*st.read(d7, 0, "/local/domain/5/private"), "p");
  EXPECT_EQ(st.set_target(d5, 7, 5).error(), EACCES);
  EXPECT_EQ(st.set_target(d0, 7, 42).error(), ENOENT);
}

TEST_F(XsStoreTest, ReleasedDomainLosesOwnershipAndGrants) {
  st.introduce_domain(5);
  make_home(5);
  ASSERT_TRUE(st.write(d5, 0, "x", "1"));
  ASSERT_TRUE(st.write(d0, 0, "/backend/5", "b"));
  const XsPerm perms[] = {P(0, XsPerm::kNone), P(5, XsPerm::kRead)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/backend/5", perms));
  ASSERT_TRUE(st.release_domain(5));
  EXPECT_THAT(*st.get_perms(d0, 0, "/local/domain/5/x"), ElementsAre(P(0, XsPerm::kNone)));
  EXPECT_THAT(*st.get_perms(d0, 0, "/backend/5"), ElementsAre(P(0, XsPerm::kNone)));
  EXPECT_EQ(st.nodes_owned(5), 0u);
  // A new domain reusing the id inherits nothing.
  EXPECT_EQ(st.read(d5, 0, "/backend/5").error(), EACCES);
  EXPECT_FALSE(st.release_domain(5));
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, NodeQuotaBoundsWhatAGuestCanCreate) {
  make_home(5);
  EXPECT_EQ(st.nodes_owned(5), 1u);
  for (size_t i = 1; i < kXsMaxNodesPerDomain; ++i) {
    // Built by append: GCC 12 at -O3 misreads "n" + std::to_string(i) (-Wrestrict).
    std::string name("n");
    name.append(std::to_string(i));
    ASSERT_TRUE(st.write(d5, 0, name, "")) << i;
  }
  EXPECT_EQ(st.write(d5, 0, "one-too-many", "").error(), ENOSPC);
  EXPECT_TRUE(st.write(d5, 0, "n1", "overwrite is fine"));
  ASSERT_TRUE(st.rm(d5, 0, "n1"));
  EXPECT_TRUE(st.write(d5, 0, "fits-again", ""));
  // dom0 has no quota.
  EXPECT_TRUE(st.write(d0, 0, "/local/domain/5/by-dom0", ""));
  // Nor may a guest store big entries.
  EXPECT_EQ(st.write(d5, 0, "n2", std::string(kXsMaxEntrySize, 'x')).error(), ENOSPC);
}

// ------------------------------------------------------------------ transactions

TEST_F(XsStoreTest, TransactionSeesItsOwnWritesOthersSeeThemAtCommit) {
  ASSERT_TRUE(st.write(d0, 0, "/t/old", "o"));
  auto t = st.transaction_start(d0);
  ASSERT_TRUE(t);
  EXPECT_NE(*t, kXsNoTxn);
  ASSERT_TRUE(st.write(d0, *t, "/t/new/leaf", "n"));
  ASSERT_TRUE(st.rm(d0, *t, "/t/old"));
  EXPECT_EQ(*st.read(d0, *t, "/t/new/leaf"), "n");
  EXPECT_EQ(st.read(d0, *t, "/t/old").error(), ENOENT);
  EXPECT_THAT(*st.directory(d0, *t, "/t"), ElementsAre("new"));
  // Outside the transaction nothing happened yet.
  EXPECT_EQ(st.read(d0, 0, "/t/new/leaf").error(), ENOENT);
  EXPECT_THAT(*st.directory(d0, 0, "/t"), ElementsAre("old"));
  ASSERT_TRUE(st.transaction_end(d0, *t, true));
  EXPECT_EQ(*st.read(d0, 0, "/t/new/leaf"), "n");
  EXPECT_THAT(*st.directory(d0, 0, "/t"), ElementsAre("new"));
  EXPECT_EQ(st.open_transactions(), 0u);
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, AbortDiscardsEverything) {
  size_t nodes = st.node_count();
  auto t = st.transaction_start(d0);
  ASSERT_TRUE(st.write(d0, *t, "/abort/me", "x"));
  ASSERT_TRUE(st.transaction_end(d0, *t, false));
  EXPECT_EQ(st.read(d0, 0, "/abort/me").error(), ENOENT);
  EXPECT_EQ(st.node_count(), nodes);
  EXPECT_EQ(st.transaction_end(d0, *t, true).error(), ENOENT);  // gone
}

TEST_F(XsStoreTest, ConflictingCommitIsEagainAndAppliesNothing) {
  ASSERT_TRUE(st.write(d0, 0, "/c/counter", "1"));
  auto t = st.transaction_start(d0);
  EXPECT_EQ(*st.read(d0, *t, "/c/counter"), "1");
  ASSERT_TRUE(st.write(d0, *t, "/c/counter", "2"));
  ASSERT_TRUE(st.write(d0, *t, "/c/side-effect", "x"));
  // Somebody else changes what the transaction read.
  XsConnId toolstack = st.add_connection(0, XsConnKind::kInProcess);
  ASSERT_TRUE(st.write(toolstack, 0, "/c/counter", "10"));
  EXPECT_EQ(st.transaction_end(d0, *t, true).error(), EAGAIN);
  EXPECT_EQ(*st.read(d0, 0, "/c/counter"), "10");
  EXPECT_EQ(st.read(d0, 0, "/c/side-effect").error(), ENOENT);
  EXPECT_EQ(st.conn_stats(d0).conflicts, 1u);
}

TEST_F(XsStoreTest, NodeThatDidNotExistThenAppearedIsAConflict) {
  auto t = st.transaction_start(d0);
  EXPECT_EQ(st.read(d0, *t, "/appear").error(), ENOENT);
  ASSERT_TRUE(st.write(d0, *t, "/other", "x"));
  ASSERT_TRUE(st.write(d0, 0, "/appear", "now"));
  EXPECT_EQ(st.transaction_end(d0, *t, true).error(), EAGAIN);
}

TEST_F(XsStoreTest, BlindWriteConflictsWithConcurrentCreate) {
  auto a = st.transaction_start(d0);
  auto b = st.transaction_start(d0);
  ASSERT_TRUE(st.write(d0, *a, "/same/node", "a"));
  ASSERT_TRUE(st.write(d0, *b, "/same/node", "b"));
  ASSERT_TRUE(st.transaction_end(d0, *a, true));
  EXPECT_EQ(st.transaction_end(d0, *b, true).error(), EAGAIN);
  EXPECT_EQ(*st.read(d0, 0, "/same/node"), "a");
}

TEST_F(XsStoreTest, DisjointTransactionsUnderOneParentBothCommit) {
  ASSERT_TRUE(st.mkdir(d0, 0, "/local/domain/0/backend/vbd"));
  // Many devices connecting at once: every transaction creates its own
  // subtree below the same parent; none may conflict with another.
  std::vector<XsTxn> txns;
  for (int dev = 0; dev < 8; ++dev) {
    auto t = st.transaction_start(d0);
    ASSERT_TRUE(t);
    std::string base = "/local/domain/0/backend/vbd/" + std::to_string(dev + 1) + "/51712";
    ASSERT_TRUE(st.write(d0, *t, base + "/state", "1"));
    ASSERT_TRUE(st.write(d0, *t, base + "/params", "disk" + std::to_string(dev)));
    txns.push_back(*t);
  }
  for (XsTxn t : txns) EXPECT_TRUE(st.transaction_end(d0, t, true));
  EXPECT_EQ(st.directory(d0, 0, "/local/domain/0/backend/vbd")->size(), 8u);
  EXPECT_EQ(st.conn_stats(d0).conflicts, 0u);
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, ListingADirectoryConflictsWithAConcurrentNewChild) {
  ASSERT_TRUE(st.write(d0, 0, "/list/a", ""));
  auto t = st.transaction_start(d0);
  EXPECT_THAT(*st.directory(d0, *t, "/list"), ElementsAre("a"));
  ASSERT_TRUE(st.write(d0, *t, "/list-count", "1"));
  ASSERT_TRUE(st.write(d0, 0, "/list/b", ""));
  EXPECT_EQ(st.transaction_end(d0, *t, true).error(), EAGAIN);
}

TEST_F(XsStoreTest, RmInTransactionConflictsWithAChildAddedMeanwhile) {
  ASSERT_TRUE(st.write(d0, 0, "/sub/x", ""));
  auto t = st.transaction_start(d0);
  ASSERT_TRUE(st.rm(d0, *t, "/sub"));
  ASSERT_TRUE(st.write(d0, 0, "/sub/y", ""));
  EXPECT_EQ(st.transaction_end(d0, *t, true).error(), EAGAIN);
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, RmAndRecreateInOneTransaction) {
  ASSERT_TRUE(st.write(d0, 0, "/rr/old/deep", "1"));
  auto t = st.transaction_start(d0);
  ASSERT_TRUE(st.rm(d0, *t, "/rr"));
  ASSERT_TRUE(st.write(d0, *t, "/rr/new", "2"));
  EXPECT_THAT(*st.directory(d0, *t, "/rr"), ElementsAre("new"));
  ASSERT_TRUE(st.transaction_end(d0, *t, true));
  EXPECT_THAT(*st.directory(d0, 0, "/rr"), ElementsAre("new"));
  EXPECT_EQ(st.read(d0, 0, "/rr/old/deep").error(), ENOENT);
  EXPECT_EQ(st.check(), "");
}

TEST_F(XsStoreTest, TransactionLimitsAndUnknownIds) {
  make_home(5);
  std::vector<XsTxn> open;
  for (size_t i = 0; i < kXsMaxTransactionsPerConn; ++i) {
    auto t = st.transaction_start(d5);
    ASSERT_TRUE(t);
    open.push_back(*t);
  }
  EXPECT_EQ(st.transaction_start(d5).error(), ENOSPC);
  ASSERT_TRUE(st.transaction_end(d5, open.back(), false));
  EXPECT_TRUE(st.transaction_start(d5));
  EXPECT_EQ(st.read(d5, 12345, "x").error(), ENOENT);
  EXPECT_EQ(st.transaction_end(d5, 0, true).error(), ENOENT);
  EXPECT_EQ(st.open_transactions(), kXsMaxTransactionsPerConn);
  st.remove_connection(d5);  // they die with the connection
  EXPECT_EQ(st.open_transactions(), 0u);
}

TEST_F(XsStoreTest, UnprivilegedTransactionKeepsPermissionChecks) {
  make_home(5);
  auto t = st.transaction_start(d5);
  EXPECT_EQ(st.write(d5, *t, "/local/domain/0/x", "no").error(), EACCES);
  ASSERT_TRUE(st.write(d5, *t, "mine/a", "yes"));
  ASSERT_TRUE(st.transaction_end(d5, *t, true));
  EXPECT_THAT(*st.get_perms(d0, 0, "/local/domain/5/mine/a"), ElementsAre(P(5, XsPerm::kNone)));
  EXPECT_EQ(st.nodes_owned(5), 3u);
}

TEST_F(XsStoreTest, DirectoryPartAssemblesLongListsAndTracksGeneration) {
  const int kChildren = 400;  // ~8 KiB of names: more than one message
  for (int i = 0; i < kChildren; ++i) ASSERT_TRUE(st.mkdir(d0, 0, "/big/child-name-number-" + std::to_string(i)));
  std::string gen;
  std::vector<std::string> names;
  uint32_t off = 0;
  for (int round = 0; round < 10; ++round) {
    auto r = st.directory_part(d0, 0, "/big", off);
    ASSERT_TRUE(r);
    ASSERT_LE(r->size(), size_t{XENSTORE_PAYLOAD_MAX});
    std::string g = r->substr(0, r->find('\0'));
    if (round == 0) gen = g;
    EXPECT_EQ(g, gen);
    std::string body = r->substr(g.size() + 1);
    bool done = body.size() >= 1 && body.back() == '\0' && (body.size() == 1 || body[body.size() - 2] == '\0');
    size_t pos = 0;
    while (pos < body.size()) {
      size_t nul = body.find('\0', pos);
      if (nul > pos) names.push_back(body.substr(pos, nul - pos));
      pos = nul + 1;
    }
    off += static_cast<uint32_t>(done ? body.size() - 1 : body.size());
    if (done) break;
  }
  EXPECT_EQ(names.size(), size_t{kChildren});
  EXPECT_EQ(names, *st.directory(d0, 0, "/big"));
  // Past the end: just the generation and an empty string.
  auto end = st.directory_part(d0, 0, "/big", 1u << 30);
  EXPECT_EQ(*end, gen + std::string("\0\0", 2));
  // A new child changes the generation.
  ASSERT_TRUE(st.mkdir(d0, 0, "/big/another"));
  auto again = st.directory_part(d0, 0, "/big", 0);
  EXPECT_NE(again->substr(0, again->find('\0')), gen);
}

// ------------------------------------------------------------------ watches

TEST_F(XsStoreTest, WatchFiresOnceWhenSetThenForChangesAtOrBelow) {
  ASSERT_TRUE(st.watch(d0, "/w", "tok"));
  auto initial = events(d0);
  ASSERT_EQ(initial.size(), 1u);
  EXPECT_EQ(initial[0].path, "/w");
  EXPECT_EQ(initial[0].token, "tok");
  ASSERT_TRUE(st.write(d0, 0, "/w/a/b", "1"));
  ASSERT_TRUE(st.write(d0, 0, "/w", "2"));
  ASSERT_TRUE(st.write(d0, 0, "/wx", "sibling, not below"));
  ASSERT_TRUE(st.write(d0, 0, "/other", "3"));
  EXPECT_THAT(event_paths(d0), ElementsAre("/w/a/b", "/w"));
  ASSERT_TRUE(st.mkdir(d0, 0, "/w/dir"));
  EXPECT_THAT(event_paths(d0), ElementsAre("/w/dir"));
  ASSERT_TRUE(st.mkdir(d0, 0, "/w/dir"));  // no change, no event
  EXPECT_EQ(st.queued_events(d0), 0u);
  const XsPerm perms[] = {P(0, XsPerm::kRead)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/w/dir", perms));
  EXPECT_THAT(event_paths(d0), ElementsAre("/w/dir"));
}

TEST_F(XsStoreTest, RmFiresWatchesOnRemovedDescendantsWithTheirOwnPaths) {
  ASSERT_TRUE(st.write(d0, 0, "/fe/backend/state", "4"));
  ASSERT_TRUE(st.watch(d0, "/fe/backend/state", "state"));
  ASSERT_TRUE(st.watch(d0, "/fe", "top"));
  events(d0);
  ASSERT_TRUE(st.rm(d0, 0, "/fe/backend"));
  auto ev = events(d0);
  std::vector<std::pair<std::string, std::string>> got;
  for (auto& e : ev) got.emplace_back(e.path, e.token);
  // The descendant's own watch with its own path; the ancestor's watch once
  // for the removed root (post-order, as xenstored walks the tree).
  EXPECT_THAT(got, ElementsAre(std::make_pair(std::string("/fe/backend/state"), std::string("state")),
                               std::make_pair(std::string("/fe/backend"), std::string("top"))));
}

TEST_F(XsStoreTest, RelativeWatchReportsRelativePaths) {
  make_home(5);
  ASSERT_TRUE(st.watch(d5, "device", "dev"));
  EXPECT_THAT(event_paths(d5), ElementsAre("device"));
  ASSERT_TRUE(st.write(d0, 0, "/local/domain/5/device/vbd/1", "x"));
  EXPECT_THAT(event_paths(d5), ElementsAre("device/vbd/1"));
  EXPECT_TRUE(st.unwatch(d5, "device", "dev"));
  EXPECT_EQ(st.watch_count(), 0u);
}

TEST_F(XsStoreTest, DuplicateWatchIsEexistUnknownUnwatchIsEnoent) {
  ASSERT_TRUE(st.watch(d0, "/dup", "t"));
  EXPECT_EQ(st.watch(d0, "/dup", "t").error(), EEXIST);
  EXPECT_TRUE(st.watch(d0, "/dup", "t2"));
  EXPECT_TRUE(st.watch(d5, "/dup", "t"));  // other connection: fine
  EXPECT_EQ(st.unwatch(d0, "/dup", "nope").error(), ENOENT);
  EXPECT_EQ(st.watch(d0, "/bad//path", "t").error(), EINVAL);
  EXPECT_EQ(st.watch(d0, "/ok", std::string("t\0x", 3)).error(), EINVAL);
  EXPECT_EQ(st.watch_count(), 3u);
  st.reset_watches(d0);
  EXPECT_EQ(st.watch_count(), 1u);
}

TEST_F(XsStoreTest, TransactionChangesFireAtCommitOnlyAndNotOnAbort) {
  ASSERT_TRUE(st.watch(d0, "/tx", "w"));
  events(d0);
  auto t = st.transaction_start(d0);
  ASSERT_TRUE(st.write(d0, *t, "/tx/a", "1"));
  ASSERT_TRUE(st.write(d0, *t, "/tx/a", "2"));
  EXPECT_EQ(st.queued_events(d0), 0u);
  ASSERT_TRUE(st.transaction_end(d0, *t, true));
  EXPECT_THAT(event_paths(d0), ElementsAre("/tx/a"));

  auto aborted = st.transaction_start(d0);
  ASSERT_TRUE(st.write(d0, *aborted, "/tx/b", "1"));
  ASSERT_TRUE(st.transaction_end(d0, *aborted, false));
  EXPECT_EQ(st.queued_events(d0), 0u);

  auto conflicted = st.transaction_start(d0);
  EXPECT_TRUE(st.read(d0, *conflicted, "/tx/a"));
  ASSERT_TRUE(st.write(d0, *conflicted, "/tx/c", "1"));
  ASSERT_TRUE(st.write(d0, 0, "/tx/a", "3"));
  EXPECT_THAT(event_paths(d0), ElementsAre("/tx/a"));
  EXPECT_EQ(st.transaction_end(d0, *conflicted, true).error(), EAGAIN);
  EXPECT_EQ(st.queued_events(d0), 0u);
}

TEST_F(XsStoreTest, WatchersMustBeAbleToReadTheNode) {
  ASSERT_TRUE(st.mkdir(d0, 0, "/priv"));
  ASSERT_TRUE(st.watch(d5, "/priv", "w"));
  EXPECT_EQ(events(d5).size(), 1u);  // the initial event is unconditional
  ASSERT_TRUE(st.write(d0, 0, "/priv/x", "secret"));
  EXPECT_EQ(st.queued_events(d5), 0u);

  const XsPerm readable[] = {P(0, XsPerm::kNone), P(5, XsPerm::kRead)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/priv/x", readable));
  EXPECT_THAT(event_paths(d5), ElementsAre("/priv/x"));
  ASSERT_TRUE(st.write(d0, 0, "/priv/x", "visible"));
  EXPECT_THAT(event_paths(d5), ElementsAre("/priv/x"));
  // Losing access is itself reported (xenstored checks the old perms too).
  const XsPerm revoked[] = {P(0, XsPerm::kNone)};
  ASSERT_TRUE(st.set_perms(d0, 0, "/priv/x", revoked));
  EXPECT_THAT(event_paths(d5), ElementsAre("/priv/x"));
  ASSERT_TRUE(st.write(d0, 0, "/priv/x", "hidden again"));
  EXPECT_EQ(st.queued_events(d5), 0u);
}

TEST_F(XsStoreTest, IdenticalQueuedEventsCollapse) {
  ASSERT_TRUE(st.watch(d0, "/dd", "w"));
  events(d0);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(st.write(d0, 0, "/dd/x", std::to_string(i)));
  ASSERT_TRUE(st.write(d0, 0, "/dd/y", "1"));
  EXPECT_THAT(event_paths(d0), ElementsAre("/dd/x", "/dd/y"));
  ASSERT_TRUE(st.write(d0, 0, "/dd/x", "again"));  // after delivery: a new event
  EXPECT_THAT(event_paths(d0), ElementsAre("/dd/x"));
}

TEST_F(XsStoreTest, DomainEventsFireForPrivilegedAndGrantedWatchers) {
  ASSERT_TRUE(st.watch(d0, "@introduceDomain", "intro"));
  ASSERT_TRUE(st.watch(d0, "@releaseDomain", "rel"));
  ASSERT_TRUE(st.watch(d5, "@releaseDomain", "rel5"));
  ASSERT_TRUE(st.watch(d0, "/", "everything"));
  events(d0);
  events(d5);
  EXPECT_TRUE(st.introduce_domain(9));
  EXPECT_FALSE(st.introduce_domain(9));  // already introduced: no second event
  EXPECT_THAT(event_paths(d0), ElementsAre("@introduceDomain"));
  EXPECT_TRUE(st.release_domain(9));
  EXPECT_THAT(event_paths(d0), ElementsAre("@releaseDomain"));
  EXPECT_EQ(st.queued_events(d5), 0u);  // not granted

  const XsPerm let_5_read[] = {P(0, XsPerm::kNone), P(5, XsPerm::kRead)};
  EXPECT_EQ(st.set_perms(d5, 0, "@releaseDomain", let_5_read).error(), EACCES);
  ASSERT_TRUE(st.set_perms(d0, 0, "@releaseDomain", let_5_read));
  EXPECT_EQ(st.set_perms(d0, 0, "@nonsense", let_5_read).error(), EINVAL);
  st.introduce_domain(9);
  st.release_domain(9);
  EXPECT_THAT(event_paths(d5), ElementsAre("@releaseDomain"));
}

TEST_F(XsStoreTest, WatchQuotaForGuests) {
  make_home(5);
  for (size_t i = 0; i < kXsMaxWatchesPerConn; ++i) ASSERT_TRUE(st.watch(d5, "w", std::to_string(i)));
  EXPECT_EQ(st.watch(d5, "w", "one more").error(), E2BIG);
  EXPECT_TRUE(st.watch(d0, "w", "dom0 is not limited"));
}

TEST_F(XsStoreTest, NotifyFiresWhenAQueueBecomesNonEmpty) {
  std::vector<XsConnId> notified;
  st.set_event_notify([&](XsConnId c) { notified.push_back(c); });
  ASSERT_TRUE(st.watch(d0, "/n", "a"));
  ASSERT_TRUE(st.write(d0, 0, "/n/x", "1"));  // queue already non-empty
  EXPECT_THAT(notified, ElementsAre(d0));
  EXPECT_EQ(events(d0).size(), 2u);
  ASSERT_TRUE(st.write(d0, 0, "/n/y", "1"));
  EXPECT_THAT(notified, ElementsAre(d0, d0));
}

// ------------------------------------------------------------------ stats, connections

TEST_F(XsStoreTest, CountsOperationsPerConnectionAndKind) {
  XsConnId sock = st.add_connection(0, XsConnKind::kSocket);
  ASSERT_TRUE(st.write(sock, 0, "/s", "1"));
  EXPECT_TRUE(st.read(sock, 0, "/s"));
  EXPECT_FALSE(st.read(sock, 0, "/missing"));
  auto t = st.transaction_start(sock);
  ASSERT_TRUE(st.write(sock, *t, "/s", "2"));
  ASSERT_TRUE(st.write(d0, 0, "/s", "3"));
  EXPECT_EQ(st.transaction_end(sock, *t, true).error(), EAGAIN);
  ASSERT_TRUE(st.watch(sock, "/s", "w"));

  XsOpStats s = st.socket_stats();
  EXPECT_EQ(s.ops, 7u);
  EXPECT_EQ(s.by_type[XS_READ], 2u);
  EXPECT_EQ(s.by_type[XS_WRITE], 2u);
  EXPECT_EQ(s.by_type[XS_TRANSACTION_START], 1u);
  EXPECT_EQ(s.by_type[XS_TRANSACTION_END], 1u);
  EXPECT_EQ(s.by_type[XS_WATCH], 1u);
  EXPECT_EQ(s.transactions, 1u);
  EXPECT_EQ(s.conflicts, 1u);
  EXPECT_EQ(s.watch_events, 1u);
  EXPECT_EQ(st.domain_stats(0).ops, 1u);  // the in-process dom0 write

  // Closed connections stay in the totals until reset.
  st.remove_connection(sock);
  EXPECT_EQ(st.socket_stats().ops, 7u);
  EXPECT_EQ(st.watch_count(), 0u);
  st.reset_stats();
  EXPECT_EQ(st.socket_stats().ops, 0u);
  EXPECT_EQ(st.domain_stats(0).ops, 0u);
}

TEST_F(XsStoreTest, DomainManagementIsPrivileged) {
  EXPECT_EQ(st.introduce(d5, 9).error(), EACCES);
  EXPECT_TRUE(st.introduce(d0, 9));
  EXPECT_TRUE(*st.is_introduced(d0, 9));
  EXPECT_FALSE(*st.is_introduced(d0, 10));
  EXPECT_TRUE(*st.is_introduced(d0, kDomidSelf));
  EXPECT_TRUE(st.resume(d0, 9));
  EXPECT_EQ(st.resume(d0, 10).error(), ENOENT);
  EXPECT_EQ(st.release(d0, 0).error(), EINVAL);
  EXPECT_TRUE(st.release(d0, 9));
  EXPECT_EQ(st.release(d0, 9).error(), ENOENT);
}

}  // namespace
}  // namespace xenpath::sim
