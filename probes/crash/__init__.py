"""crashprobe: the kernel's core_pattern handler, a streaming ELF core reader, a CFI
unwinder and a symbolizer, in pure Python (pyelftools for ELF and DWARF)."""
