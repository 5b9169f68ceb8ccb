//! Integration tests: real nodes, real gRPC, real mutual TLS on 127.0.0.1
//! with ports chosen by the kernel. Files are numbered by theme.

mod cluster;
mod t10_tokens;
mod t20_refusals;
mod t22_policy_freshness;
mod t25_hostile;
mod t30_restart;
mod t40_transport;
mod t42_tls_reload;
mod t44_https;
mod t45_limits;
mod t46_oauth_http;
mod t50_crash;
mod t55_keys;
mod t60_cli;
mod t62_ops;
mod t70_dev;
mod t80_cluster;
mod t82_consistency;
mod t83_learners;
mod t83_read_rounds;
mod t84_catch_up;
mod t85_watch;
mod t86_coalesce;
mod t88_cutoffs;
mod t90_kill9;
mod t92_pause;
mod t95_client;
mod t96_middleware;
mod t97_metrics;
mod t98_backup;
mod t99_data_formats;
