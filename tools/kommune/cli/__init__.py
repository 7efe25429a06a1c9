"""`kommune`: the one command for technicians, staff and operators."""
