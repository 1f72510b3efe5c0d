"""Who a caller is: bound Linux identities, actors, and who a project runs as."""
