# Cove: `make run` sets everything up and starts Cove; `make test` runs every test.
# Both work on a fresh Debian 12 machine as root (they install what is missing).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export COVE_HOME ?= $(HOME)/.cove

APT_PACKAGES := qemu-system-x86 qemu-system-arm qemu-utils mmdebstrap squashfs-tools kmod \
	cpio gcc libc6-dev qemu-user-static binfmt-support arch-test \
	systemd-boot-efi dosfstools mtools binutils clang \
	busybox-static ca-certificates iproute2 python3-venv docker-registry \
	xvfb xauth libegl1 libgl1 libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-randr0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-image0 libdbus-1-3 libfontconfig1 dbus-daemon

.PHONY: run test deps venv image images lint typecheck unit integration ui bench clean screenshots \
	package fuzz

run: deps venv image
	$(BIN)/python -m desktop.demo

test: deps venv images lint typecheck
	$(BIN)/python -m pytest -p no:cacheprovider --durations=25 tests

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v docker >/dev/null || sh installers/linux/install-docker-cli.sh
	@docker compose version >/dev/null 2>&1 || sh installers/linux/install-cli-plugins.sh compose
	@docker buildx version >/dev/null 2>&1 || sh installers/linux/install-cli-plugins.sh buildx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,package,bench]'
	touch $@

venv: $(VENV)/.installed

# `image`: the guest image for this host's architecture, all `make run` boots. `images`
# adds the arm64 image (Apple silicon, ARM laptops), which the tests boot too (under
# emulation): building it took 330 s of a fresh machine's first `make run`.
image: venv
	$(BIN)/python -m vm_image build

images: image
	$(BIN)/python -m vm_image build --arch arm64

# ruff (style and a complexity limit) and import-linter (the layout's contracts,
# pyproject.toml's [tool.importlinter]).
lint: venv
	$(BIN)/ruff check desktop guest_engine vm_image tests benchmarks installers
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit

integration: venv images
	$(BIN)/python -m pytest -p no:cacheprovider tests/integration

# The fuzz targets (tests/fuzz) for long: 20 000 examples each, or COVE_FUZZ_SECONDS=N
# seconds each; failures go to tests/fuzz/corpus (commit them with the fix). `make test`
# runs the same targets briefly (200 examples, the corpus read only).
fuzz: venv
	COVE_FUZZ_PROFILE=fuzz $(BIN)/python -m pytest -p no:cacheprovider \
		--hypothesis-show-statistics tests/fuzz

# The .deb (installers/linux): build/package/cove_<version>_<arch>.deb, with the guest
# image inside. VERSION=... overrides desktop.__version__ (the upgrade test builds N, N+1).
package: deps venv image
	$(BIN)/python installers/linux/package.py $(if $(VERSION),--version $(VERSION))

# Every figure (5 runs each; the tray's under Xvfb), then where an API request's host
# time goes (py-spy): benchmarks/results/latest.md, profile-api.txt and .svg.
bench: deps venv image
	xvfb-run -a $(BIN)/python -m benchmarks --runs 5
	$(BIN)/python -m benchmarks.profile

# From fixtures, then from a throwaway instance with a panel of trayer as the tray host.
screenshots: deps venv image
	@command -v trayer >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends trayer
	xvfb-run -a $(BIN)/python -m desktop.tray.screenshots docs/screenshots
	xvfb-run -a -s "-screen 0 1440x900x24" $(BIN)/python -m desktop.tray.live_screenshots \
		docs/screenshots

clean:
	rm -rf $(VENV) build *.egg-info
