"""Command-line entry points: ``overlayd`` (the daemon) and ``overlayctl``.

gRPC's C core writes its own lines to stderr ("Handshake failed …", "Corruption detected",
"Decryption error: TSI_DATA_CORRUPTED"), bypassing our logging; the store translates those
failures into one message of ours instead. It reads ``GRPC_VERBOSITY`` once, when grpc is
first imported, so the default is set here, before either entry point imports the store.
An operator debugging gRPC can still set ``GRPC_VERBOSITY=debug`` (and ``GRPC_TRACE``).
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
