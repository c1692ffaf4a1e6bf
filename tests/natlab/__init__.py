"""The NAT lab: Linux network namespaces with NAT routers and a coturn server (see lab.py)."""
