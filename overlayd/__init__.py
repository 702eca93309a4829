"""overlayd: one flat private network over hosts in several clouds and LANs."""
