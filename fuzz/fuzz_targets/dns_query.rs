#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshfed_fuzz_targets::dns_query(data));
