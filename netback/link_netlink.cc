#include "netback/link_netlink.h"

#include <libmnl/libmnl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cstring>

namespace xenpath {

namespace {

// A link message with IFLA_LINKINFO and a handful of names fits in far less;
// room for the kernel's full RTM_NEWLINK (stats, AF_SPEC) of a bridge.
constexpr size_t kReplyBuffer = 32 * 1024;
constexpr size_t kRequestBuffer = 512;
// Datagrams read per exchange before giving up (stale replies to a timed-out
// request are skipped).
constexpr int kMaxReads = 8;

class MnlChannel final : public RtnlChannel {
 public:
  explicit MnlChannel(mnl_socket* s) noexcept : sock_(s), portid_(mnl_socket_get_portid(s)) {}
  ~MnlChannel() override { mnl_socket_close(sock_); }
  MnlChannel(const MnlChannel&) = delete;
  MnlChannel& operator=(const MnlChannel&) = delete;

  Result<std::vector<uint8_t>> transact(std::span<const uint8_t> request) noexcept override {
    if (request.size() < sizeof(nlmsghdr)) return unexpected(EINVAL);
    nlmsghdr hdr;
    std::memcpy(&hdr, request.data(), sizeof(hdr));
    if (mnl_socket_sendto(sock_, request.data(), request.size()) < 0) return unexpected(errno);
    try {
      std::vector<uint8_t> buf(kReplyBuffer);
      for (int i = 0; i < kMaxReads; ++i) {
        const ssize_t n = mnl_socket_recvfrom(sock_, buf.data(), buf.size());
        if (n < 0) return unexpected(errno == EAGAIN ? ETIMEDOUT : errno);
        const auto* m = reinterpret_cast<const nlmsghdr*>(buf.data());
        if (!mnl_nlmsg_ok(m, static_cast<int>(n))) return unexpected(EBADMSG);
        if (m->nlmsg_seq != hdr.nlmsg_seq || (m->nlmsg_pid != 0 && m->nlmsg_pid != portid_)) continue;
        buf.resize(static_cast<size_t>(n));
        return buf;
      }
    } catch (...) {
      return unexpected(ENOMEM);
    }
    return unexpected(ETIMEDOUT);
  }

 private:
  mnl_socket* sock_;
  unsigned portid_;
};

nlmsghdr* put_link_header(std::vector<uint8_t>& buf, uint16_t type, uint16_t flags, uint32_t seq) {
  buf.assign(kRequestBuffer, 0);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = flags;
  nlh->nlmsg_seq = seq;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  return nlh;
}

// The message answering `seq` in a datagram, or null.
const nlmsghdr* find_reply(std::span<const uint8_t> reply, uint32_t seq) noexcept {
  const auto* m = reinterpret_cast<const nlmsghdr*>(reply.data());
  int len = static_cast<int>(std::min<size_t>(reply.size(), INT32_MAX));
  for (int i = 0; i < 64 && mnl_nlmsg_ok(m, len); ++i, m = mnl_nlmsg_next(m, &len)) {
    if (m->nlmsg_seq == seq) return m;
  }
  return nullptr;
}

// An NLMSG_ERROR's errno (0 for an ack), or EBADMSG when truncated.
int error_of(const nlmsghdr* m) noexcept {
  if (m->nlmsg_len < mnl_nlmsg_size(sizeof(nlmsgerr))) return EBADMSG;
  const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
  if (e->error > 0 || e->error < -4095) return EBADMSG;
  return -e->error;
}

struct LinkAttrs {
  RtnlLink* out;
  const nlattr* linkinfo = nullptr;
};

std::string attr_string(const nlattr* a) {
  const auto* p = static_cast<const char*>(mnl_attr_get_payload(a));
  const size_t n = mnl_attr_get_payload_len(a);
  return std::string(p, strnlen(p, n));
}

int link_attr_cb(const nlattr* a, void* data) {
  auto* la = static_cast<LinkAttrs*>(data);
  const uint16_t type = mnl_attr_get_type(a);
  switch (type) {
    case IFLA_MTU:
    case IFLA_MASTER:
      if (mnl_attr_validate(a, MNL_TYPE_U32) < 0) return MNL_CB_ERROR;
      (type == IFLA_MTU ? la->out->mtu : la->out->master) = mnl_attr_get_u32(a);
      break;
    case IFLA_IFNAME:
      if (mnl_attr_validate(a, MNL_TYPE_STRING) < 0) return MNL_CB_ERROR;
      la->out->name = attr_string(a);
      break;
    case IFLA_LINKINFO:
      if (mnl_attr_validate(a, MNL_TYPE_NESTED) < 0) return MNL_CB_ERROR;
      la->linkinfo = a;
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

int linkinfo_attr_cb(const nlattr* a, void* data) {
  if (mnl_attr_get_type(a) == IFLA_INFO_KIND) {
    if (mnl_attr_validate(a, MNL_TYPE_STRING) < 0) return MNL_CB_ERROR;
    static_cast<RtnlLink*>(data)->kind = attr_string(a);
  }
  return MNL_CB_OK;
}

}  // namespace

Result<std::unique_ptr<RtnlChannel>> open_rtnl_channel() noexcept {
  mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (s == nullptr) return unexpected(errno);
  // The kernel answers rtnetlink requests synchronously; the timeout only
  // bounds a lost reply.
  timeval tv{.tv_sec = 2, .tv_usec = 0};
  if (setsockopt(mnl_socket_get_fd(s), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
      mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) {
    const int e = errno;
    mnl_socket_close(s);
    return unexpected(e);
  }
  try {
    return std::unique_ptr<RtnlChannel>(std::make_unique<MnlChannel>(s));
  } catch (...) {
    mnl_socket_close(s);
    return unexpected(ENOMEM);
  }
}

std::vector<uint8_t> rtnl_getlink_request(std::string_view ifname, uint32_t seq) {
  std::vector<uint8_t> buf;
  nlmsghdr* nlh = put_link_header(buf, RTM_GETLINK, NLM_F_REQUEST, seq);
  // Without the stats and VF lists the kernel would add.
  mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  const std::string name(ifname);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  buf.resize(nlh->nlmsg_len);
  return buf;
}

std::vector<uint8_t> rtnl_setlink_request(std::string_view ifname, uint32_t seq, uint32_t mtu, uint32_t master,
                                          bool up) {
  std::vector<uint8_t> buf;
  nlmsghdr* nlh = put_link_header(buf, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  if (up) {
    ifm->ifi_flags = IFF_UP;
    ifm->ifi_change = IFF_UP;
  }
  const std::string name(ifname);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  if (mtu != 0) mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
  if (master != 0) mnl_attr_put_u32(nlh, IFLA_MASTER, master);
  buf.resize(nlh->nlmsg_len);
  return buf;
}

Result<RtnlLink> rtnl_parse_link(std::span<const uint8_t> reply, uint32_t seq) noexcept {
  const nlmsghdr* m = find_reply(reply, seq);
  if (m == nullptr) return unexpected(EBADMSG);
  if (m->nlmsg_type == NLMSG_ERROR) {
    const int e = error_of(m);
    return unexpected(e == 0 ? EBADMSG : e);
  }
  if (m->nlmsg_type != RTM_NEWLINK || m->nlmsg_len < mnl_nlmsg_size(sizeof(ifinfomsg))) return unexpected(EBADMSG);
  try {
    RtnlLink link;
    const auto* ifm = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(m));
    if (ifm->ifi_index <= 0) return unexpected(EBADMSG);
    link.index = static_cast<uint32_t>(ifm->ifi_index);
    link.flags = ifm->ifi_flags;
    LinkAttrs la{&link};
    if (mnl_attr_parse(m, sizeof(ifinfomsg), link_attr_cb, &la) < 0) return unexpected(EBADMSG);
    if (la.linkinfo != nullptr && mnl_attr_parse_nested(la.linkinfo, linkinfo_attr_cb, &link) < 0) {
      return unexpected(EBADMSG);
    }
    return link;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Status rtnl_parse_ack(std::span<const uint8_t> reply, uint32_t seq) noexcept {
  const nlmsghdr* m = find_reply(reply, seq);
  if (m == nullptr || m->nlmsg_type != NLMSG_ERROR) return unexpected(EBADMSG);
  if (const int e = error_of(m); e != 0) return unexpected(e);
  return ok();
}

// ---------------------------------------------------------------------------

Result<std::vector<uint8_t>> RtnlVifLink::exchange(const std::vector<uint8_t>& req) noexcept {
  if (!channel_) {
    auto c = open_rtnl_channel();
    if (!c) return unexpected(c.error());
    channel_ = std::move(*c);
  }
  ++stats_.requests;
  auto r = channel_->transact(req);
  // A socket that lost a reply may hold it still: start over with a new one.
  if (!r) channel_.reset();
  return r;
}

Result<RtnlLink> RtnlVifLink::get_link(std::string_view ifname) noexcept {
  try {
    const uint32_t seq = ++seq_;
    XP_ASSIGN_OR_RETURN(const std::vector<uint8_t> reply, exchange(rtnl_getlink_request(ifname, seq)));
    return rtnl_parse_link(reply, seq);
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<RtnlLink> RtnlVifLink::find_bridge(const VifLinkRequest& req) noexcept {
  const std::string& br = req.keys.bridge;
  auto link = get_link(br);
  try {
    const char* why = nullptr;
    if (!link && link.error() == ENODEV) why = "does not exist";
    else if (!link) return unexpected(link.error());
    else if (link->kind != "bridge") why = "is not a Linux bridge (Open vSwitch and others: --vif-hook)";
    if (why == nullptr) {
      warned_.erase(br);
      return link;
    }
    // Once per bridge name (and again after it worked once): every VIF of
    // a host usually names the same bridge.
    if (warned_.insert(br).second) {
      spdlog::warn("vif {}/{}: bridge {} {}: {} and later VIFs naming it stay up, unattached", req.domid, req.devid, br,
                   why, req.ifname);
    }
    return RtnlLink{};
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Status RtnlVifLink::attach(const VifLinkRequest& req) noexcept {
  if (!valid_ifname(req.ifname)) return unexpected(EINVAL);
  RtnlLink bridge;
  if (!req.keys.bridge.empty()) {
    auto b = find_bridge(req);
    if (!b) {
      ++stats_.failures;
      return unexpected(b.error());
    }
    bridge = *b;
  }
  // The vif-bridge script's rule: the toolstack's MTU, else the bridge's.
  uint32_t mtu = req.keys.mtu != 0 ? req.keys.mtu : bridge.mtu;
  if (mtu == 0) mtu = 1500;
  const uint32_t seq = ++seq_;
  Status st = ok();
  try {
    auto reply = exchange(rtnl_setlink_request(req.ifname, seq, mtu, bridge.index, true));
    st = reply ? rtnl_parse_ack(*reply, seq) : Status(unexpected(reply.error()));
  } catch (...) {
    st = unexpected(ENOMEM);
  }
  if (!st) {
    ++stats_.failures;
    return st;
  }
  if (bridge.index != 0) {
    ++stats_.attached;
    spdlog::info("vif {}/{}: {} up, mtu {}, in bridge {}", req.domid, req.devid, req.ifname, mtu, req.keys.bridge);
  } else {
    ++stats_.unattached;
    spdlog::info("vif {}/{}: {} up, mtu {}, in no bridge", req.domid, req.devid, req.ifname, mtu);
  }
  return ok();
}

}  // namespace xenpath
