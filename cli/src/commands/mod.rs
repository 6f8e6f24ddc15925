pub mod control;
pub mod daemon;
pub mod ps;
pub mod run;
pub mod xenstored;
