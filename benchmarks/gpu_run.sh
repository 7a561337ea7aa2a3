set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import jax; print(jax.__version__, jax.devices())"
cd benchmarks
timeout 230 python3 gpu_check.py --out $OUT/gpu_bp.jsonl --batches 1024,8192,65536 2>&1 | tee $OUT/gpu_bp.log
timeout 200 python3 bench_memory.py --out $OUT/gpu_memory.jsonl 2>&1 | grep -v "it/s\]" | tee $OUT/gpu_memory.log
