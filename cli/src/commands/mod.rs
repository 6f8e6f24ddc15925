pub mod run;
pub mod xenstored;
