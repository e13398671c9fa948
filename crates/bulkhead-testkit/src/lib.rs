//! Stand-ins for outside services, speaking their real wire formats, so tests and benchmarks
//! need no internet. Never a dependency of the product: the architecture test checks that
//! only test and bench targets use it.

pub mod fake_llm;
