pub mod control;
pub mod daemon;
pub mod pack;
pub mod ps;
pub mod run;
pub mod xenstored;
