#![no_std]
#![no_main]

#[no_mangle]
extern "C" fn hart_main(_hart: usize) -> ! {
    riscv_qemu::fail()
}
