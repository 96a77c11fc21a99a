//! A manager whose connections are `()` and whose every operation succeeds at once:
//! the unit tests' stand-in where only the pool's own bookkeeping is under test.

use std::convert::Infallible;

use crate::Manager;

pub(crate) struct Unit;

impl Manager for Unit {
    type Connection = ();
    type Error = Infallible;
    async fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }
    async fn is_valid(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }
    async fn reset(&self, _: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }
    fn is_disconnect(&self, _: &Infallible) -> bool {
        false
    }
}
