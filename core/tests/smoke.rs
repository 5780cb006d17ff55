use kontext::Context;
#[test]
fn smoke() {
    let root = Context::background();
    let (a, ca) = root.child();
    let (b, _cb) = a.child();
    let v = b.with_value(5u8);
    let (c, _cc) = v.child();
    assert!(!c.is_cancelled());
    assert!(ca.cancel());
    assert!(b.is_cancelled() && c.is_cancelled() && v.is_cancelled());
    assert_eq!(c.value::<u8>(), Some(&5));
}
