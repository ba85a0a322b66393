//! NCCL as a [`Collective`] for candle's CUDA tensors (`cuda` feature):
//! cudarc's bindings on candle's own stream, so the all-reduce is ordered
//! after the backward kernels that produced the gradients without a host
//! synchronisation.
//!
//! Invariant: one communicator per process, rank = the job's rank, on the
//! GPU of the process's device; the id comes from rank 0 through the
//! rendezvous file.

use std::os::raw::c_char;
use std::path::Path;
use std::time::Duration;

use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Result, Storage, Tensor};

use super::{publish, wait_for, Collective, DistError, World};

/// This process's member of the job's NCCL communicator.
pub struct NcclGroup {
    comm: Comm,
    device: candle_core::CudaDevice,
}

fn nccl_error(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("nccl: {e:?}"))
}

impl NcclGroup {
    /// Join the job: rank 0 creates the NCCL id and publishes it at
    /// `rendezvous`; the other ranks wait up to `timeout` for it.
    pub fn join(
        world: World,
        device: &Device,
        rendezvous: &Path,
        timeout: Duration,
    ) -> std::result::Result<NcclGroup, DistError> {
        let dev = device.as_cuda_device()?.clone();
        let id = if world.rank == 0 {
            let id = Id::new().map_err(nccl_error)?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            publish(rendezvous, &bytes)?;
            id
        } else {
            let bytes = wait_for(rendezvous, 128, timeout)?;
            let mut internal = [0 as c_char; 128];
            for (d, s) in internal.iter_mut().zip(bytes) {
                *d = s as c_char;
            }
            Id::uninit(internal)
        };
        let comm =
            Comm::from_rank(dev.cuda_stream(), world.rank, world.size, id).map_err(nccl_error)?;
        Ok(NcclGroup { comm, device: dev })
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let x = t.to_dtype(DType::F32)?.contiguous()?;
        let n = x.elem_count();
        let mut dst = self.device.alloc_zeros::<f32>(n)?;
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cuda(s) = &*storage else {
                candle_core::bail!("nccl all-reduce: the tensor is not on a CUDA device");
            };
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("nccl all-reduce: not contiguous".into()))?;
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            self.comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(nccl_error)?;
        }
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(dst, self.device.clone()));
        Tensor::from_storage(storage, x.shape().clone(), BackpropOp::none(), false)
            .to_dtype(t.dtype())
    }
}
