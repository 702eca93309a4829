"""WireGuard drivers behind one ``driver.Driver`` interface chosen by ``driver.open_driver``:
the kernel module over generic netlink (``kernel``) and userspace wireguard-go over its
UAPI socket (``userspace``, ``uapi``). The config/state model and the per-peer diff are
values (``overlayd.values.wireguard``)."""
