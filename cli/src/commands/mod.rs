pub mod control;
pub mod run;
pub mod xenstored;
