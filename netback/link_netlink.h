// The rtnetlink adapter (libmnl): the only netback code that speaks
// netlink. RtnlVifLink attaches a VIF's interface to a Linux bridge with
// two request/reply exchanges on one NETLINK_ROUTE socket kept for the
// daemon's life:
//   1. RTM_GETLINK by name for the bridge: its index, MTU and kind
//      (IFLA_LINKINFO/IFLA_INFO_KIND must be "bridge"; an Open vSwitch
//      bridge's interface is "openvswitch" and needs the hook);
//   2. RTM_NEWLINK (NLM_F_ACK) on the interface by name: IFLA_MTU,
//      IFF_UP and IFLA_MASTER in one message (the kernel applies MTU, flags,
//      then master). Setting the master it already has is a no-op in the
//      kernel, so a repeated attach is idempotent.
// Without a bridge key (or the bridge missing), only exchange 2, without
// IFLA_MASTER. The socket is the seam tests fake (RtnlChannel); the message
// builders and parsers are exposed for them.
//
// Threads: the control thread (VifLink's rule). No guest input reaches it
// except through validated toolstack keys.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "netback/vif_link.h"

namespace xenpath {

// One request, its reply: the part of netlink tests replace.
class RtnlChannel {
 public:
  virtual ~RtnlChannel() = default;
  // Sends `request` (one message, NLM_F_REQUEST set) and returns the
  // datagram that answers it (the message whose nlmsg_seq matches).
  virtual Result<std::vector<uint8_t>> transact(std::span<const uint8_t> request) noexcept = 0;
};

// A NETLINK_ROUTE socket (libmnl), replies bounded by a 2 s receive timeout.
Result<std::unique_ptr<RtnlChannel>> open_rtnl_channel() noexcept;

// A link as RTM_NEWLINK describes it.
struct RtnlLink {
  uint32_t index = 0;
  uint32_t mtu = 0;
  uint32_t master = 0;  // 0: none
  uint32_t flags = 0;   // IFF_*
  std::string name;
  std::string kind;  // IFLA_INFO_KIND, empty for a plain device
};

std::vector<uint8_t> rtnl_getlink_request(std::string_view ifname, uint32_t seq);
// master 0: no IFLA_MASTER (the current master is left alone).
std::vector<uint8_t> rtnl_setlink_request(std::string_view ifname, uint32_t seq, uint32_t mtu, uint32_t master,
                                          bool up);
// The RTM_NEWLINK answering `seq`; an NLMSG_ERROR's errno (ENODEV: no
// such link); EBADMSG when neither is there or it does not parse.
Result<RtnlLink> rtnl_parse_link(std::span<const uint8_t> reply, uint32_t seq) noexcept;
// The NLMSG_ERROR answering `seq`: ok for 0, else its errno.
Status rtnl_parse_ack(std::span<const uint8_t> reply, uint32_t seq) noexcept;

class RtnlVifLink final : public VifLink {
 public:
  // `channel` null: opened at the first attach (and again after a failure).
  explicit RtnlVifLink(std::unique_ptr<RtnlChannel> channel = nullptr) noexcept : channel_(std::move(channel)) {}
  Status attach(const VifLinkRequest& req) noexcept override;
  // Nothing to undo: closing the port destroys its interface, which the
  // kernel takes out of the bridge.
  void detach(const VifLinkRequest& /*req*/) noexcept override {}
  [[nodiscard]] const char* mode() const noexcept override { return "netlink"; }
  [[nodiscard]] const VifLinkStats& stats() const noexcept override { return stats_; }

  // Looks a link up by name (one exchange).
  Result<RtnlLink> get_link(std::string_view ifname) noexcept;

 private:
  Result<std::vector<uint8_t>> exchange(const std::vector<uint8_t>& req) noexcept;
  // The bridge's index and MTU, or 0/0 (logged) when it cannot be joined.
  Result<RtnlLink> find_bridge(const VifLinkRequest& req) noexcept;

  std::unique_ptr<RtnlChannel> channel_;
  uint32_t seq_ = 0;
  VifLinkStats stats_;
  std::set<std::string> warned_;  // bridges already reported unusable
};

}  // namespace xenpath
