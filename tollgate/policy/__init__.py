"""What a tenant may do: rules and matchers compiled per config version, admission, settlement, leases, load shedding."""
