"""Everything about Redis: the store, its Lua compare-and-set scripts and the queue backend."""
