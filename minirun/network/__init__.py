"""Container networking: bridges, veth pairs, addresses, NAT and published ports, and a
CNI driver for pods. Nothing here is on minirun-oci's start path."""
