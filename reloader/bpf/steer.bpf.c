// SPDX-License-Identifier: GPL-2.0
// `--strategy steer`: picks the listener of each new connection in one
// SO_REUSEPORT group, by generation. The reloader fills `socks` (slot s's
// listeners at s * PER_SLOT ...) and `conf`; the kernel runs this for every
// SYN, and (attach type SELECT_OR_MIGRATE) for every queued or half-open
// connection of a closing listener, which then go to the active slot.
#include <linux/bpf.h>

// The few definitions of libbpf's bpf_helpers.h we use, so that clang and
// the kernel's uapi headers are all the build needs.
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) =
	(void *)BPF_FUNC_skb_load_bytes;
static long (*bpf_skb_load_bytes_relative)(const void *skb, __u32 offset, void *to, __u32 len,
					   __u32 start_header) = (void *)BPF_FUNC_skb_load_bytes_relative;
static long (*bpf_sk_select_reuseport)(void *reuse, void *map, void *key, __u64 flags) =
	(void *)BPF_FUNC_sk_select_reuseport;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define bpf_htons(x) __builtin_bswap16(x)
#else
#define bpf_htons(x) (x)
#endif

#define PER_SLOT 64
#define SLOTS 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6

struct conf {
	__u32 active;      // the slot that gets new connections
	__u32 count[SLOTS]; // listeners in each slot
	// The reloader's own check connects from this source (network
	// order; family 0: none) and goes to `probe_slot`.
	__u32 probe_family; // 4 or 6
	__u32 probe_slot;
	__u32 probe_addr[4];
	__u32 probe_port;
	// A share (of 10,000) of new connections goes to `canary_slot`.
	__u32 canary_share;
	__u32 canary_slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, SLOTS * PER_SLOT);
	__type(key, __u32);
	__type(value, __u32); // a socket's fd, when written
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conf);
} conf SEC(".maps");

// Per slot: connections sent there (0, 1); then migrations (2, 3); then
// fallbacks to the kernel's own choice (4: no listener in either slot);
// fallbacks to the other slot (5); the check's connections (6); the errno
// of the last refused selection (7).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SLOTS + 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
}

// Whether the packet comes from the reloader's check.
static __always_inline int is_probe(struct sk_reuseport_md *md, struct conf *c)
{
	__u16 ports[2];
	__u32 addr[4] = {};

	if (!c->probe_family || md->ip_protocol != IPPROTO_TCP)
		return 0;
	if (bpf_skb_load_bytes(md, 0, ports, sizeof(ports)))
		return 0;
	if (ports[0] != (__u16)c->probe_port)
		return 0;
	if (c->probe_family == 4 && md->eth_protocol == bpf_htons(ETH_P_IP)) {
		// iphdr.saddr
		if (bpf_skb_load_bytes_relative(md, 12, addr, 4, BPF_HDR_START_NET))
			return 0;
		return addr[0] == c->probe_addr[0];
	}
	if (c->probe_family == 6 && md->eth_protocol == bpf_htons(ETH_P_IPV6)) {
		// ipv6hdr.saddr
		if (bpf_skb_load_bytes_relative(md, 8, addr, 16, BPF_HDR_START_NET))
			return 0;
		return addr[0] == c->probe_addr[0] && addr[1] == c->probe_addr[1] &&
		       addr[2] == c->probe_addr[2] && addr[3] == c->probe_addr[3];
	}
	return 0;
}

static __always_inline int pick(struct sk_reuseport_md *md, struct conf *c, __u32 slot)
{
	__u32 n, key;

	if (slot >= SLOTS)
		return -1;
	n = c->count[slot];
	if (n == 0 || n > PER_SLOT)
		return -1;
	key = slot * PER_SLOT + md->hash % n;
	return bpf_sk_select_reuseport(md, &socks, &key, 0);
}

SEC("sk_reuseport/migrate")
int steer(struct sk_reuseport_md *md)
{
	__u32 zero = 0, slot;
	struct conf *c = bpf_map_lookup_elem(&conf, &zero);

	if (!c)
		return SK_PASS;
	slot = c->active;
	if (md->migrating_sk)
		; // a closing listener's connection: to the active slot
	else if (is_probe(md, c)) {
		slot = c->probe_slot;
		count(2 * SLOTS + 2);
	}
	else if (c->canary_share && md->hash % 10000 < c->canary_share)
		slot = c->canary_slot;
	int err = pick(md, c, slot);
	if (err == 0) {
		count(md->migrating_sk ? SLOTS + slot : slot);
		return SK_PASS;
	}
	{
		// The last refusal's errno, for a reader of the counters.
		__u32 k = 2 * SLOTS + 3;
		__u64 *e = bpf_map_lookup_elem(&counts, &k);
		if (e)
			*e = (__u64)(-err);
	}
	// That slot has no listener (its server closed them): the other one.
	slot = slot ? 0 : 1;
	count(2 * SLOTS + 1);
	if (pick(md, c, slot) == 0) {
		count(md->migrating_sk ? SLOTS + slot : slot);
		return SK_PASS;
	}
	count(2 * SLOTS);
	return SK_PASS; // the kernel's own choice
}

char LICENSE[] SEC("license") = "GPL";
