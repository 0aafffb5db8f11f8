// dom0's side of a VIF without a kernel: the toolstack keys, the rtnetlink
// messages RtnlVifLink builds and the replies it parses (libmnl reads them
// back; a fake channel answers as the kernel does), and the hook's argv,
// environment, failure and timeout.
#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <sstream>

#include "netback/link_netlink.h"
#include "sim/sim_xenstore_client.h"

namespace xenpath {
namespace {

// A request as the kernel sees it.
struct Parsed {
  uint16_t type = 0;
  uint16_t flags = 0;
  uint32_t seq = 0;
  unsigned ifi_flags = 0;
  unsigned ifi_change = 0;
  std::map<uint16_t, std::vector<uint8_t>> attrs;
  [[nodiscard]] std::string str(uint16_t t) const {
    auto it = attrs.find(t);
    if (it == attrs.end()) return "<none>";
    return std::string(reinterpret_cast<const char*>(it->second.data()),
                       strnlen(reinterpret_cast<const char*>(it->second.data()), it->second.size()));
  }
  [[nodiscard]] std::optional<uint32_t> u32(uint16_t t) const {
    auto it = attrs.find(t);
    if (it == attrs.end() || it->second.size() != 4) return std::nullopt;
    uint32_t v;
    std::memcpy(&v, it->second.data(), 4);
    return v;
  }
};

Parsed parse_request(const std::vector<uint8_t>& buf) {
  Parsed p;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data());
  EXPECT_TRUE(mnl_nlmsg_ok(nlh, static_cast<int>(buf.size())));
  EXPECT_EQ(nlh->nlmsg_len, buf.size());
  p.type = nlh->nlmsg_type;
  p.flags = nlh->nlmsg_flags;
  p.seq = nlh->nlmsg_seq;
  const auto* ifm = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  EXPECT_EQ(ifm->ifi_index, 0);
  p.ifi_flags = ifm->ifi_flags;
  p.ifi_change = ifm->ifi_change;
  mnl_attr_parse(
      nlh, sizeof(ifinfomsg),
      [](const nlattr* a, void* d) {
        auto* pp = static_cast<Parsed*>(d);
        const auto* b = static_cast<const uint8_t*>(mnl_attr_get_payload(a));
        pp->attrs[mnl_attr_get_type(a)].assign(b, b + mnl_attr_get_payload_len(a));
        return MNL_CB_OK;
      },
      &p);
  return p;
}

// The kernel's answer to a GETLINK: RTM_NEWLINK with name, MTU, kind.
std::vector<uint8_t> link_reply(uint32_t seq, int index, const char* name, uint32_t mtu, const char* kind) {
  std::vector<uint8_t> buf(1024);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = RTM_NEWLINK;
  nlh->nlmsg_seq = seq;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_index = index;
  ifm->ifi_flags = IFF_UP;
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
  mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
  if (kind != nullptr) {
    nlattr* li = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
    mnl_attr_put_strz(nlh, IFLA_INFO_KIND, kind);
    mnl_attr_nest_end(nlh, li);
  }
  buf.resize(nlh->nlmsg_len);
  return buf;
}

std::vector<uint8_t> error_reply(uint32_t seq, int err) {
  std::vector<uint8_t> buf(256);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = NLMSG_ERROR;
  nlh->nlmsg_seq = seq;
  auto* e = static_cast<nlmsgerr*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nlmsgerr)));
  e->error = -err;
  buf.resize(nlh->nlmsg_len);
  return buf;
}

// Answers as a kernel with the given links would (by name), records every request.
class FakeKernel final : public RtnlChannel {
 public:
  struct Link {
    int index;
    uint32_t mtu;
    const char* kind;
  };
  std::map<std::string, Link> links;
  int setlink_error = 0;
  std::vector<Parsed>* log;

  explicit FakeKernel(std::vector<Parsed>* l) : log(l) {}
  Result<std::vector<uint8_t>> transact(std::span<const uint8_t> request) noexcept override {
    Parsed p = parse_request(std::vector<uint8_t>(request.begin(), request.end()));
    log->push_back(p);
    const std::string name = p.str(IFLA_IFNAME);
    auto it = links.find(name);
    if (p.type == RTM_GETLINK) {
      if (it == links.end()) return error_reply(p.seq, ENODEV);
      return link_reply(p.seq, it->second.index, name.c_str(), it->second.mtu, it->second.kind);
    }
    if (it == links.end()) return error_reply(p.seq, ENODEV);
    return error_reply(p.seq, setlink_error);
  }
};

TEST(VifLinkMessages, GetlinkNamesTheLinkWithoutStats) {
  const Parsed p = parse_request(rtnl_getlink_request("xenbr0", 41));
  EXPECT_EQ(p.type, RTM_GETLINK);
  EXPECT_EQ(p.flags, NLM_F_REQUEST);  // no ACK: the reply is the RTM_NEWLINK alone
  EXPECT_EQ(p.seq, 41u);
  EXPECT_EQ(p.str(IFLA_IFNAME), "xenbr0");
  EXPECT_EQ(p.u32(IFLA_EXT_MASK), RTEXT_FILTER_SKIP_STATS);
}

TEST(VifLinkMessages, SetlinkCarriesMtuMasterAndUp) {
  Parsed p = parse_request(rtnl_setlink_request("vif5.0", 7, 9000, 12, true));
  EXPECT_EQ(p.type, RTM_NEWLINK);
  EXPECT_EQ(p.flags, NLM_F_REQUEST | NLM_F_ACK);  // no CREATE: an existing link only
  EXPECT_EQ(p.str(IFLA_IFNAME), "vif5.0");
  EXPECT_EQ(p.u32(IFLA_MTU), 9000u);
  EXPECT_EQ(p.u32(IFLA_MASTER), 12u);
  EXPECT_EQ(p.ifi_flags, unsigned{IFF_UP});
  EXPECT_EQ(p.ifi_change, unsigned{IFF_UP});
  // Without a bridge: no IFLA_MASTER at all (0 would mean "leave your master").
  p = parse_request(rtnl_setlink_request("vif5.0", 8, 1500, 0, true));
  EXPECT_FALSE(p.u32(IFLA_MASTER));
  EXPECT_EQ(p.u32(IFLA_MTU), 1500u);
}

TEST(VifLinkMessages, ParsesLinkErrorsAndRejectsGarbage) {
  auto l = rtnl_parse_link(link_reply(3, 17, "xenbr0", 1400, "bridge"), 3);
  ASSERT_TRUE(l) << error_string(l.error());
  EXPECT_EQ(l->index, 17u);
  EXPECT_EQ(l->mtu, 1400u);
  EXPECT_EQ(l->name, "xenbr0");
  EXPECT_EQ(l->kind, "bridge");
  l = rtnl_parse_link(link_reply(3, 2, "eth0", 1500, nullptr), 3);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->kind, "");
  EXPECT_EQ(rtnl_parse_link(error_reply(4, ENODEV), 4).error(), ENODEV);
  // The reply to another request, an ack where a link was expected, bytes cut short.
  EXPECT_EQ(rtnl_parse_link(link_reply(3, 17, "xenbr0", 1400, "bridge"), 4).error(), EBADMSG);
  EXPECT_EQ(rtnl_parse_link(error_reply(4, 0), 4).error(), EBADMSG);
  auto cut = link_reply(5, 17, "xenbr0", 1400, "bridge");
  cut.resize(cut.size() - 9);
  EXPECT_FALSE(rtnl_parse_link(cut, 5));
  EXPECT_FALSE(rtnl_parse_link(std::vector<uint8_t>(3, 0xff), 5));
  EXPECT_TRUE(rtnl_parse_ack(error_reply(6, 0), 6));
  EXPECT_EQ(rtnl_parse_ack(error_reply(6, EPERM), 6).error(), EPERM);
  EXPECT_EQ(rtnl_parse_ack(error_reply(6, 0), 7).error(), EBADMSG);
}

class RtnlVifLinkTest : public ::testing::Test {
 protected:
  RtnlVifLinkTest() {
    auto k = std::make_unique<FakeKernel>(&log_);
    kernel_ = k.get();
    kernel_->links = {
        {"xenbr0", {4, 1400, "bridge"}}, {"ovsbr", {5, 1500, "openvswitch"}}, {"vif5.0", {9, 1500, "tun"}}};
    link_ = std::make_unique<RtnlVifLink>(std::move(k));
  }
  static VifLinkRequest req(std::string bridge, uint32_t mtu = 0) {
    VifLinkRequest r;
    r.ifname = "vif5.0";
    r.keys.bridge = std::move(bridge);
    r.keys.mtu = mtu;
    r.domid = 5;
    return r;
  }
  std::vector<Parsed> log_;
  FakeKernel* kernel_;
  std::unique_ptr<RtnlVifLink> link_;
};

TEST_F(RtnlVifLinkTest, TwoRequestsJoinTheBridgeWithItsMtu) {
  ASSERT_TRUE(link_->attach(req("xenbr0")));
  ASSERT_EQ(log_.size(), 2u);
  EXPECT_EQ(log_[0].type, RTM_GETLINK);
  EXPECT_EQ(log_[0].str(IFLA_IFNAME), "xenbr0");
  EXPECT_EQ(log_[1].type, RTM_NEWLINK);
  EXPECT_EQ(log_[1].str(IFLA_IFNAME), "vif5.0");
  EXPECT_EQ(log_[1].u32(IFLA_MASTER), 4u);
  EXPECT_EQ(log_[1].u32(IFLA_MTU), 1400u);  // no mtu key: the bridge's
  EXPECT_NE(log_[0].seq, log_[1].seq);
  EXPECT_EQ(link_->stats().attached, 1u);
  EXPECT_EQ(link_->stats().requests, 2u);
  // The toolstack's mtu wins; attaching again is the same two messages.
  ASSERT_TRUE(link_->attach(req("xenbr0", 9000)));
  ASSERT_EQ(log_.size(), 4u);
  EXPECT_EQ(log_[3].u32(IFLA_MTU), 9000u);
  EXPECT_EQ(log_[3].u32(IFLA_MASTER), 4u);
  EXPECT_EQ(link_->stats().attached, 2u);
}

TEST_F(RtnlVifLinkTest, MissingOrForeignBridgeLeavesTheInterfaceUpUnattached) {
  for (const char* br : {"nobr", "nobr", "ovsbr"}) {
    ASSERT_TRUE(link_->attach(req(br))) << br;
    ASSERT_EQ(log_.back().type, RTM_NEWLINK);
    EXPECT_FALSE(log_.back().u32(IFLA_MASTER)) << br;
    EXPECT_EQ(log_.back().u32(IFLA_MTU), 1500u) << br;
    EXPECT_EQ(log_.back().ifi_flags, unsigned{IFF_UP});
  }
  EXPECT_EQ(link_->stats().unattached, 3u);
  EXPECT_EQ(link_->stats().attached, 0u);
  // No bridge key: one request only, MTU from the key.
  log_.clear();
  ASSERT_TRUE(link_->attach(req("", 1280)));
  ASSERT_EQ(log_.size(), 1u);
  EXPECT_EQ(log_[0].u32(IFLA_MTU), 1280u);
}

TEST_F(RtnlVifLinkTest, KernelRefusalIsAFailure) {
  kernel_->setlink_error = EPERM;
  EXPECT_EQ(link_->attach(req("xenbr0")).error(), EPERM);
  VifLinkRequest gone = req("xenbr0");
  gone.ifname = "vif6.0";
  kernel_->setlink_error = 0;
  EXPECT_EQ(link_->attach(gone).error(), ENODEV);
  gone.ifname = "../x";
  EXPECT_EQ(link_->attach(gone).error(), EINVAL);
  EXPECT_EQ(link_->stats().failures, 2u);
}

TEST(VifLinkKeys, ReadsValidatesAndDefaults) {
  auto xs = sim::SimXenStoreClient::create(std::make_shared<sim::XsSharedStore>(), 0);
  ASSERT_TRUE(xs);
  XenStore& s = **xs;
  const std::string be = "/local/domain/0/backend/vif/5/0";
  std::string warn;
  auto k = read_vif_link_keys(s, kXsNoTxn, be, &warn);
  ASSERT_TRUE(k);
  EXPECT_EQ(k->bridge, "");
  EXPECT_EQ(k->mtu, 0u);
  EXPECT_EQ(warn, "");
  ASSERT_TRUE(s.write(kXsNoTxn, be + "/bridge", "xenbr0"));
  ASSERT_TRUE(s.write(kXsNoTxn, be + "/mtu", "9000"));
  ASSERT_TRUE(s.write(kXsNoTxn, be + "/ip", "10.0.0.2 10.0.0.3"));
  k = read_vif_link_keys(s, kXsNoTxn, be, &warn);
  ASSERT_TRUE(k);
  EXPECT_EQ(k->bridge, "xenbr0");
  EXPECT_EQ(k->mtu, 9000u);
  EXPECT_EQ(k->ip, "10.0.0.2 10.0.0.3");
  EXPECT_EQ(warn, "");
  for (const char* bad : {"a/b", "has space", "sixteen-chars-xx", "..", "br:0"}) {
    ASSERT_TRUE(s.write(kXsNoTxn, be + "/bridge", bad));
    warn.clear();
    k = read_vif_link_keys(s, kXsNoTxn, be, &warn);
    ASSERT_TRUE(k);
    EXPECT_EQ(k->bridge, "") << bad;
    EXPECT_NE(warn.find("bridge"), std::string::npos) << bad;
  }
  for (const char* bad : {"67", "65536", "09000", "1500x", "-1"}) {
    ASSERT_TRUE(s.write(kXsNoTxn, be + "/mtu", bad));
    warn.clear();
    k = read_vif_link_keys(s, kXsNoTxn, be, &warn);
    ASSERT_TRUE(k);
    EXPECT_EQ(k->mtu, 0u) << bad;
    EXPECT_NE(warn.find("mtu"), std::string::npos) << bad;
  }
  ASSERT_TRUE(s.write(kXsNoTxn, be + "/ip", std::string("1.2.3.4\n; rm")));
  k = read_vif_link_keys(s, kXsNoTxn, be, &warn);
  ASSERT_TRUE(k);
  EXPECT_EQ(k->ip, "");
}

// ---- the hook ----

class VifLinkHookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/xp-hook-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { (void)std::system(("rm -rf " + dir_).c_str()); }
  std::string script(const std::string& body) {
    const std::string p = dir_ + "/hook";
    std::ofstream(p) << "#!/bin/sh\n" << body << "\n";
    chmod(p.c_str(), 0700);
    return p;
  }
  std::string slurp(const std::string& name) {
    std::ifstream in(dir_ + "/" + name);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static VifLinkRequest req() {
    VifLinkRequest r;
    r.ifname = "vif5.1";
    r.keys.bridge = "ovsbr0";
    r.keys.mtu = 9000;
    r.keys.ip = "10.1.1.5";
    r.domid = 5;
    r.devid = 1;
    r.backend_path = "/local/domain/0/backend/vif/5/1";
    return r;
  }
  std::string dir_;
};

TEST_F(VifLinkHookTest, RunsWithArgumentsAndEnvironment) {
  VifLinkHook hook(script("echo \"$1|$2|$3|$XENPATH_DOMID|$XENPATH_DEVID|$XENPATH_MTU|$XENPATH_IP|$XENBUS_PATH|$vif\""
                          " >> " +
                          dir_ + "/out"),
                   std::chrono::milliseconds(5000));
  ASSERT_TRUE(hook.attach(req()));
  hook.detach(req());
  EXPECT_EQ(slurp("out"),
            "add|vif5.1|ovsbr0|5|1|9000|10.1.1.5|/local/domain/0/backend/vif/5/1|vif5.1\n"
            "remove|vif5.1|ovsbr0|5|1|9000|10.1.1.5|/local/domain/0/backend/vif/5/1|vif5.1\n");
  EXPECT_EQ(hook.stats().attached, 1u);
  EXPECT_EQ(hook.stats().requests, 2u);
  EXPECT_EQ(hook.stats().failures, 0u);
}

TEST_F(VifLinkHookTest, FailureAndTimeoutAreReported) {
  VifLinkHook failing(script("exit 3"), std::chrono::milliseconds(5000));
  EXPECT_EQ(failing.attach(req()).error(), EIO);
  EXPECT_EQ(failing.stats().failures, 1u);
  VifLinkHook hanging(script("exec sleep 30"), std::chrono::milliseconds(200));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(hanging.attach(req()).error(), ETIMEDOUT);
  // Killed, not waited for (a generous bound: only that it did not sleep 30 s).
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  VifLinkHook missing(dir_ + "/absent", std::chrono::milliseconds(200));
  EXPECT_FALSE(missing.attach(req()));
}

}  // namespace
}  // namespace xenpath
