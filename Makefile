# pyvmm - `make` installs the package (editable) and builds the guests; `make test` tests.
PYTHON ?= python3
CC ?= gcc
GUEST_CFLAGS := -O2 -g -std=gnu11 -Wall -Wextra -ffreestanding -fno-builtin -nostdlib \
	-fno-pic -fno-pie -mno-red-zone -mgeneral-regs-only -march=x86-64 -fno-stack-protector \
	-fcf-protection=none -fno-asynchronous-unwind-tables -fno-omit-frame-pointer -Iguests/lib
GUEST_LDFLAGS := -static -no-pie -nostdlib -Wl,--build-id=none -Wl,-z,max-page-size=4096 \
	-Wl,-z,noexecstack -Wl,--no-warn-rwx-segments -T guests/lib/guest.ld
GUESTS := hello selftest protocol probe msrs cr3 paging timer irq realmode mbtest
B := guests/build
RT_OBJS := $(B)/entry.o $(B)/rt.o $(B)/ucall.o $(B)/idt.o $(B)/isr.o $(B)/apic.o $(B)/pt.o

.PHONY: all install guests test unit lint bench clean
.SECONDARY:
all: install guests

install:
	$(PYTHON) -m pip install -q -e '.[test]'

MB_GUESTS := hello selftest mbtest vmexit
guests: $(GUESTS:%=$(B)/%.elf) $(MB_GUESTS:%=$(B)/%.flat) $(B)/mb_rmpit.flat

$(B):
	mkdir -p $@
$(B)/%.o: guests/lib/%.S | $(B)
	$(CC) $(GUEST_CFLAGS) -c -o $@ $<
$(B)/%.o: guests/lib/%.c $(wildcard guests/lib/*.h) | $(B)
	$(CC) $(GUEST_CFLAGS) -c -o $@ $<
$(B)/%.main.o: guests/%.c $(wildcard guests/lib/*.h) | $(B)
	$(CC) $(GUEST_CFLAGS) -c -o $@ $<
$(B)/%.elf: $(B)/%.main.o $(RT_OBJS) guests/lib/guest.ld
	$(CC) $(GUEST_CFLAGS) $(GUEST_LDFLAGS) -o $@ $(RT_OBJS) $<

# the same objects linked with the multiboot entry, then turned into ELF32 (EM_386), the
# form QEMU's -kernel (and kvm-unit-tests' .flat files) use
FLAT_LDFLAGS := $(subst guests/lib/guest.ld,guests/lib/flat.ld,$(GUEST_LDFLAGS))
$(B)/%.flat: $(B)/%.main.o $(RT_OBJS) guests/lib/flat.ld
	$(CC) $(GUEST_CFLAGS) $(FLAT_LDFLAGS) -o $@.64 $(RT_OBJS) $<
	objcopy -O elf32-i386 $@.64 $@
	rm -f $@.64

$(B)/mb_rmpit.flat: guests/mb_rmpit.S guests/lib/mb16.ld | $(B)
	as --32 -o $(B)/mb_rmpit.o $<
	ld -m elf_i386 --build-id=none -T guests/lib/mb16.ld -o $@ $(B)/mb_rmpit.o

test: guests
	$(PYTHON) -m ruff check pyvmm tests bench cbindings
	$(PYTHON) -m pytest -q

unit:
	$(PYTHON) -m pytest -q tests/unit

lint:
	$(PYTHON) -m ruff check pyvmm tests bench cbindings

bench: guests
	$(MAKE) -C bench
	$(PYTHON) bench/run.py

clean:
	rm -rf $(B) build *.egg-info pyvmm/_native*.so pyvmm/_native.c
