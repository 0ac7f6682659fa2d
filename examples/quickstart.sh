#!/usr/bin/env bash
# The DDPM/DDIM tour: bundled default, DDIM inversion, training, benchmarking. Runs on a laptop CPU.
set -euo pipefail
mkdir -p out

gmkit models                                                  # what is bundled
gmkit sample ddpm -n 16 --seed 0 --out out/ddpm.png          # 1000 ancestral steps
gmkit sample ddim -n 64 --steps 50 --seed 0 --out out/ddim/  # one PNG per image
gmkit sample ddim -n 1 --seed 3 --out out/seed3.png          # image 3 of the batch above, alone

# DDIM inversion: image -> noise -> the same image.
gmkit encode ddim out/ddim/0003.png --steps 50 --out out/noise.safetensors
gmkit sample ddim --init out/noise.safetensors --steps 50 --out out/back.png

# Pipes: encode to stdout, sample from stdin, PNG to stdout.
gmkit encode ddim out/ddim/0005.png | gmkit sample ddim --init - --out - > out/piped.png

# A short training run, then continue it exactly where it stopped.
gmkit train ddpm --data mnist --steps 200 --out out/run
gmkit train ddpm --steps 400 --resume out/run
gmkit sample out/run --sampler ddim -n 16 --out out/run.png

gmkit bench --models ddpm,ddim --batch-size 16
