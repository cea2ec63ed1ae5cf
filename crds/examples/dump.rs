fn main() {
    for c in meshfed_crds::manifests::all_crds() {
        println!("{}", meshfed_crds::manifests::to_yaml(&c).unwrap());
    }
}
