//! The kernel's and the `nft` program's numbers, written from the uapi headers
//! (`linux/netlink.h`, `linux/netfilter.h`, `linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nf_tables.h`, `linux/netfilter/nf_conntrack_common.h`,
//! `linux/rtnetlink.h`) and from what `nft` stores as user data. Only the ones sinew uses.

// ----- netlink (linux/netlink.h) -----
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
pub(super) const NLMSG_ERROR: u16 = 0x2;
pub(super) const NLMSG_DONE: u16 = 0x3;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NLMSG_HDRLEN: usize = 16;

// ----- nfnetlink (linux/netfilter/nfnetlink.h) -----
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFNETLINK_V0: u8 = 0;

// ----- netfilter (linux/netfilter.h) -----
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;
pub(super) const NF_DROP: i32 = 0;
pub(super) const NF_ACCEPT: i32 = 1;
pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NF_INET_LOCAL_IN: u32 = 1;
pub(super) const NF_INET_FORWARD: u32 = 2;
pub(super) const NF_INET_LOCAL_OUT: u32 = 3;
pub(super) const NF_INET_POST_ROUTING: u32 = 4;

// ----- nf_tables messages (enum nf_tables_msg_types) -----
pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_DELRULE: u16 = 8;
pub(super) const NFT_MSG_NEWSET: u16 = 9;
pub(super) const NFT_MSG_DELSET: u16 = 11;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
pub(super) const NFT_MSG_NEWOBJ: u16 = 18;
pub(super) const NFT_MSG_GETOBJ: u16 = 19;
pub(super) const NFT_MSG_DELOBJ: u16 = 20;

// ----- attributes -----
pub(super) const NFTA_LIST_ELEM: u16 = 1;

pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_TABLE_FLAGS: u16 = 2;

pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_CHAIN_USERDATA: u16 = 12;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;

pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;

pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFTA_SET_FLAGS: u16 = 3;
pub(super) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(super) const NFTA_SET_KEY_LEN: u16 = 5;
pub(super) const NFTA_SET_DATA_TYPE: u16 = 6;
pub(super) const NFTA_SET_DATA_LEN: u16 = 7;
pub(super) const NFTA_SET_DESC: u16 = 9;
pub(super) const NFTA_SET_ID: u16 = 10;
pub(super) const NFTA_SET_USERDATA: u16 = 13;
pub(super) const NFTA_SET_DESC_CONCAT: u16 = 2;
pub(super) const NFTA_SET_FIELD_LEN: u16 = 1;
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_MAP: u32 = 0x8;
pub(super) const NFT_SET_CONCAT: u32 = 0x80;
/// A map's data type when its values are verdicts (`NFT_DATA_VERDICT`).
pub(super) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(super) const NFTA_SET_ELEM_USERDATA: u16 = 6;
pub(super) const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
pub(super) const NFT_JUMP: i32 = -3;
pub(super) const NFT_RETURN: i32 = -5;

// Registers: `NFT_REG_1`..`NFT_REG_4` are 16 bytes each; `NFT_REG32_00`.. name the same
// space in 4-byte words (`NFT_REG32_00` overlays the start of `NFT_REG_1`).
pub(super) const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_REG32_00: u32 = 8;

pub(super) const NFTA_META_DREG: u16 = 1;
pub(super) const NFTA_META_KEY: u16 = 2;
pub(super) const NFT_META_IIFNAME: u32 = 6;
pub(super) const NFT_META_OIFNAME: u32 = 7;
pub(super) const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_META_L4PROTO: u32 = 16;

pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;

pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub(super) const NFTA_LOOKUP_SET: u16 = 1;
pub(super) const NFTA_LOOKUP_SREG: u16 = 2;
pub(super) const NFTA_LOOKUP_DREG: u16 = 3;
pub(super) const NFTA_LOOKUP_SET_ID: u16 = 4;
pub(super) const NFTA_LOOKUP_FLAGS: u16 = 5;
pub(super) const NFT_LOOKUP_F_INV: u32 = 0x1;

pub(super) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;

pub(super) const NFTA_BITWISE_SREG: u16 = 1;
pub(super) const NFTA_BITWISE_DREG: u16 = 2;
pub(super) const NFTA_BITWISE_LEN: u16 = 3;
pub(super) const NFTA_BITWISE_MASK: u16 = 4;
pub(super) const NFTA_BITWISE_XOR: u16 = 5;

pub(super) const NFTA_CT_DREG: u16 = 1;
pub(super) const NFTA_CT_KEY: u16 = 2;
pub(super) const NFT_CT_STATE: u32 = 0;
pub(super) const NFT_CT_STATUS: u32 = 2;
/// `ct state` bits (`NF_CT_STATE_BIT`, `linux/netfilter/nf_conntrack_common.h`).
pub(super) const NF_CT_STATE_INVALID: u32 = 1 << 0;
pub(super) const NF_CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub(super) const NF_CT_STATE_RELATED: u32 = 1 << 2;
pub(super) const NF_CT_STATE_NEW: u32 = 1 << 3;
pub(super) const NF_CT_STATE_UNTRACKED: u32 = 1 << 6;
/// `IPS_DST_NAT` (`linux/netfilter/nf_conntrack_common.h`).
pub(super) const IPS_DST_NAT: u32 = 1 << 5;

pub(super) const NFTA_FIB_DREG: u16 = 1;
pub(super) const NFTA_FIB_RESULT: u16 = 2;
pub(super) const NFTA_FIB_FLAGS: u16 = 3;
pub(super) const NFT_FIB_RESULT_OIF: u32 = 1;
pub(super) const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub(super) const NFTA_FIB_F_SADDR: u32 = 1 << 0;
pub(super) const NFTA_FIB_F_DADDR: u32 = 1 << 1;
pub(super) const NFTA_FIB_F_IIF: u32 = 1 << 3;
pub(super) const NFTA_FIB_F_PRESENT: u32 = 1 << 5;
/// `RTN_LOCAL` (`linux/rtnetlink.h`): the address is one of this host's.
pub(super) const RTN_LOCAL: u32 = 2;

pub(super) const NFTA_NAT_TYPE: u16 = 1;
pub(super) const NFTA_NAT_FAMILY: u16 = 2;
pub(super) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(super) const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
pub(super) const NFT_NAT_DNAT: u32 = 1;

pub(super) const NFTA_LIMIT_RATE: u16 = 1;
pub(super) const NFTA_LIMIT_UNIT: u16 = 2;
pub(super) const NFTA_LIMIT_BURST: u16 = 3;
pub(super) const NFTA_LIMIT_TYPE: u16 = 4;
pub(super) const NFTA_LIMIT_FLAGS: u16 = 5;
pub(super) const NFT_LIMIT_PKTS: u32 = 0;
/// The burst `nft` gives a packet limit when none is said (and does not print).
pub(super) const NFT_LIMIT_DEFAULT_BURST: u32 = 5;

pub(super) const NFTA_LOG_GROUP: u16 = 1;
pub(super) const NFTA_LOG_PREFIX: u16 = 2;

/// `enum nft_object_attributes`.
pub(super) const NFTA_OBJ_TABLE: u16 = 1;
pub(super) const NFTA_OBJ_NAME: u16 = 2;
pub(super) const NFTA_OBJ_TYPE: u16 = 3;
pub(super) const NFTA_OBJ_DATA: u16 = 4;
/// `NFT_OBJECT_COUNTER`.
pub(super) const NFT_OBJECT_COUNTER: u32 = 1;
pub(super) const NFTA_COUNTER_BYTES: u16 = 1;
pub(super) const NFTA_COUNTER_PACKETS: u16 = 2;
pub(super) const NFTA_OBJREF_IMM_TYPE: u16 = 1;
pub(super) const NFTA_OBJREF_IMM_NAME: u16 = 2;

pub(super) const NFTA_BYTEORDER_SREG: u16 = 1;
pub(super) const NFTA_BYTEORDER_DREG: u16 = 2;
pub(super) const NFTA_BYTEORDER_OP: u16 = 3;
pub(super) const NFTA_BYTEORDER_LEN: u16 = 4;
pub(super) const NFTA_BYTEORDER_SIZE: u16 = 5;
pub(super) const NFT_BYTEORDER_HTON: u32 = 1;

/// `IPPROTO_ICMPV6` (`linux/in6.h`).
pub(super) const IPPROTO_ICMPV6: u8 = 58;

/// `IFNAMSIZ`: an interface name matched whole is compared NUL-padded to this length.
pub(super) const IFNAMSIZ: usize = 16;

// ----- the `nft` program's user data (not interpreted by the kernel) -----
/// `nft` datatype ids (shown by `nft list`; a concatenation packs 6 bits per field).
pub(super) const NFT_TYPE_IPADDR: u32 = 7;
pub(super) const NFT_TYPE_IP6ADDR: u32 = 8;
pub(super) const NFT_TYPE_INET_PROTOCOL: u32 = 12;
pub(super) const NFT_TYPE_INET_SERVICE: u32 = 13;
pub(super) const NFT_TYPE_IFNAME: u32 = 41;
/// Set user data TLVs "key byte order" and "data byte order" (for maps): how `nft` prints
/// the elements.
pub(super) const UDATA_SET_KEYBYTEORDER: u8 = 0;
pub(super) const UDATA_SET_DATABYTEORDER: u8 = 1;
pub(super) const BYTEORDER_HOST: u32 = 0;
/// What `nft` records for an interface name (its `BYTEORDER_HOST_ENDIAN`; the concatenations'
/// and protocols' value above is its `BYTEORDER_INVALID`, kept as it always was).
pub(super) const BYTEORDER_HOST_ENDIAN: u32 = 1;
pub(super) const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// Rule, chain and element user data TLV "comment": the text, NUL-terminated.
pub(super) const UDATA_COMMENT: u8 = 0;
/// Element user data TLV "flags", value "interval open": a range reaching the top of the
/// address space has no end element.
pub(super) const UDATA_SET_ELEM_FLAGS: u8 = 1;
pub(super) const SET_ELEM_F_INTERVAL_OPEN: u32 = 0x1;
