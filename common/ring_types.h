// Ring traits for BackRing<Types> / SimFrontRing<Types>: which shared-ring
// structs a protocol uses. blkif's 32/64-bit ABI variants live in blkback/.
#pragma once

#include "common/xen/ring_protocol.h"

#include <xen/io/blkif.h>
#include <xen/io/netif.h>

namespace xenpath {

struct BlkifRing {
  using Sring = blkif_sring;
  using BackRing = blkif_back_ring;
  using FrontRing = blkif_front_ring;
  using Request = blkif_request;
  using Response = blkif_response;
};

struct NetifTxRing {
  using Sring = netif_tx_sring;
  using BackRing = netif_tx_back_ring;
  using FrontRing = netif_tx_front_ring;
  using Request = netif_tx_request;
  using Response = netif_tx_response;
};

struct NetifRxRing {
  using Sring = netif_rx_sring;
  using BackRing = netif_rx_back_ring;
  using FrontRing = netif_rx_front_ring;
  using Request = netif_rx_request;
  using Response = netif_rx_response;
};

// The netif control ring (feature-ctrl-ring): one page, hash and multicast
// configuration messages.
struct NetifCtrlRing {
  using Sring = xen_netif_ctrl_sring;
  using BackRing = xen_netif_ctrl_back_ring;
  using FrontRing = xen_netif_ctrl_front_ring;
  using Request = xen_netif_ctrl_request;
  using Response = xen_netif_ctrl_response;
};

}  // namespace xenpath
