pub mod control;
pub mod daemon;
pub mod install_node;
pub mod pack;
pub mod pause;
pub mod ps;
pub mod run;
pub mod xenstored;
