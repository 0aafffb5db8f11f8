// Ring traits for BackRing<Types> / SimFrontRing<Types>: which shared-ring
// structs a protocol uses. blkif's 32/64-bit ABI variants live in blkback/.
#pragma once

#include "common/xen/ring_protocol.h"

#include <xen/io/blkif.h>
#include <xen/io/netif.h>

namespace xenpath {

// The five types DEFINE_RING_TYPES(name, request, response) makes for one
// ring protocol, as one traits type.
template <typename S, typename Back, typename Front, typename Req, typename Rsp>
struct RingTypes {
  using Sring = S;
  using BackRing = Back;
  using FrontRing = Front;
  using Request = Req;
  using Response = Rsp;
};

using BlkifRing = RingTypes<blkif_sring, blkif_back_ring, blkif_front_ring, blkif_request, blkif_response>;
using NetifTxRing =
    RingTypes<netif_tx_sring, netif_tx_back_ring, netif_tx_front_ring, netif_tx_request, netif_tx_response>;
using NetifRxRing =
    RingTypes<netif_rx_sring, netif_rx_back_ring, netif_rx_front_ring, netif_rx_request, netif_rx_response>;
// The netif control ring (feature-ctrl-ring): one page, hash and multicast
// configuration messages.
using NetifCtrlRing = RingTypes<xen_netif_ctrl_sring, xen_netif_ctrl_back_ring, xen_netif_ctrl_front_ring,
                                xen_netif_ctrl_request, xen_netif_ctrl_response>;

}  // namespace xenpath
