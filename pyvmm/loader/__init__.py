"""Guest image loaders: bytes of a guest file -> guest memory + entry state."""

from pyvmm.loader.elf import ElfImage, GuestImageError, load_elf64, parse_elf64

__all__ = ["ElfImage", "GuestImageError", "load_elf64", "parse_elf64"]
