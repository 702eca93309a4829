"""WireGuard drivers behind one ``driver.Driver`` interface chosen by ``driver.open_driver``:
the kernel module over generic netlink (``kernel``, on ``genl``) and userspace wireguard-go
over its UAPI socket (``userspace``, ``uapi``); both handle the device's interface through
``device_link`` (``netlink.link.Links``). The config/state model and the per-peer diff are
values (``overlayd.values.wireguard``)."""
